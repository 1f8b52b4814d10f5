"""DaViT: Dual Attention Vision Transformer (Ding et al., ECCV 2022) as a dense-prediction backbone.

Modules are in data-flow order. Tokens travel between modules as ``(B, H, W, C)`` tensors: LayerNorm and
Linear act on the last dim without copies, and ``x.permute(0, 3, 1, 2)`` is a channels-last NCHW view
that the depthwise and patch convolutions take without a layout copy.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from mmdavit.registry import MODELS

ARCH_ZOO: Dict[str, dict] = {
    'tiny': dict(embed_dims=96, depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24), window_size=7),
    'small': dict(embed_dims=96, depths=(1, 1, 9, 1), num_heads=(3, 6, 12, 24), window_size=7),
    'base': dict(embed_dims=128, depths=(1, 1, 9, 1), num_heads=(4, 8, 16, 32), window_size=7),
    'large': dict(embed_dims=192, depths=(1, 1, 9, 1), num_heads=(6, 12, 24, 48), window_size=12),
    'huge': dict(embed_dims=256, depths=(1, 1, 9, 1), num_heads=(8, 16, 32, 64), window_size=12),
    'giant': dict(embed_dims=384, depths=(1, 1, 12, 3), num_heads=(12, 24, 48, 96), window_size=12),
}
ARCH_ALIASES = {name[0]: name for name in ARCH_ZOO}


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Return ``dict(embed_dims, depths, num_heads, window_size)`` for an arch name, alias or dict."""
    if isinstance(arch, dict):
        missing = {'embed_dims', 'depths', 'num_heads'} - set(arch)
        if missing:
            raise ValueError(f'DaViT arch dict lacks {sorted(missing)}; give embed_dims, depths, num_heads '
                             '(and optionally window_size)')
        spec = dict(window_size=7, **arch)
        if len(spec['depths']) != len(spec['num_heads']):
            raise ValueError(f'DaViT arch has {len(spec["depths"])} depths but {len(spec["num_heads"])} '
                             'num_heads; give one of each per stage')
        return spec
    name = ARCH_ALIASES.get(str(arch).lower(), str(arch).lower())
    if name not in ARCH_ZOO:
        valid = ', '.join(f'{n} ({n[0]})' for n in ARCH_ZOO)
        raise ValueError(f'Unknown DaViT arch {arch!r}; valid names: {valid}, or a dict')
    return dict(ARCH_ZOO[name])


def pad_right_bottom(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a ``(B, H, W, C)`` tensor at the right and bottom up to multiples of ``multiple``,
    as the released weights were trained with (not symmetric "same" padding)."""
    pad_h = -x.shape[1] % multiple
    pad_w = -x.shape[2] % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def conv_tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW convolution to ``(B, H, W, C)`` tokens, returning ``(B, H', W', C')``."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class DropPath(nn.Module):
    """Stochastic depth per sample: residual branches are dropped whole during training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


class Stem(nn.Module):
    """Stage-0 patch embedding: 7x7 stride-4 conv on the right/bottom padded image, then LayerNorm."""

    def __init__(self, in_channels: int, embed_dims: int):
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, embed_dims, kernel_size=7, stride=4, padding=3)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -images.shape[2] % 4, -images.shape[3] % 4
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return self.norm(self.conv(images).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Between stages: LayerNorm, right/bottom pad to even size, 2x2 stride-2 conv (no norm after)."""

    def __init__(self, in_dims: int, out_dims: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dims)
        self.conv = nn.Conv2d(in_dims, out_dims, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_tokens(self.conv, pad_right_bottom(self.norm(x), 2))


class ConvPosEnc(nn.Module):
    """Conditional position encoding: ``x + dwconv3x3(x)``."""

    def __init__(self, dims: int):
        super().__init__()
        self.proj = nn.Conv2d(dims, dims, kernel_size=3, padding=1, groups=dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + conv_tokens(self.proj, x)


class Mlp(nn.Module):

    def __init__(self, dims: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dims * mlp_ratio)
        self.fc1 = nn.Linear(dims, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows (no shift, no position bias).

    The input is zero-padded right/bottom to window multiples and attended *without a mask*: the padded
    tokens act as keys whose q/k/v are the qkv bias, exactly as in the official code.
    """

    def __init__(self, dims: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dims, dims * 3)
        self.proj = nn.Linear(dims, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dims = x.shape
        ws = self.window_size
        x = pad_right_bottom(x, ws)
        rows, cols = x.shape[1] // ws, x.shape[2] // ws
        windows = x.view(batch, rows, ws, cols, ws, dims).transpose(2, 3).reshape(-1, ws * ws, dims)
        q, k, v = self.qkv(windows).view(-1, ws * ws, 3, self.num_heads, dims // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(-1, ws * ws, dims))
        out = out.view(batch, rows, cols, ws, ws, dims).transpose(2, 3).reshape(batch, rows * ws, cols * ws, dims)
        return out[:, :height, :width]


class ChannelAttention(nn.Module):
    """Channel group attention: per group, keys and values build a ``C_g x C_g`` map that mixes the
    queries' channels. The role order (k, v build the map; q is transformed) is the official one."""

    def __init__(self, dims: int, num_groups: int):
        super().__init__()
        self.num_groups = num_groups
        self.scale = (dims // num_groups)**-0.5
        self.qkv = nn.Linear(dims, dims * 3)
        self.proj = nn.Linear(dims, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dims = x.shape
        tokens = height * width
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_groups, dims // self.num_groups).permute(
            2, 0, 3, 4, 1).unbind(0)  # each (B, G, C_g, N)
        attn = ((k * self.scale) @ v.transpose(-2, -1)).softmax(dim=-1)  # (B, G, C_g, C_g)
        out = (attn @ q).permute(0, 3, 1, 2).reshape(batch, height, width, dims)
        return self.proj(out)


class DualBlock(nn.Module):
    """One half of a DaViT layer: ``x + cpe1``; attention residual; ``x + cpe2``; MLP residual."""

    def __init__(self, attn: nn.Module, dims: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.cpe1 = ConvPosEnc(dims)
        self.norm1 = nn.LayerNorm(dims)
        self.attn = attn
        self.cpe2 = ConvPosEnc(dims)
        self.norm2 = nn.LayerNorm(dims)
        self.mlp = Mlp(dims, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe1(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = self.cpe2(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DaViTLayer(nn.Module):
    """A spatial (window) block followed by a channel block."""

    def __init__(self, dims: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: Tuple[float, float]):
        super().__init__()
        self.spatial = DualBlock(WindowAttention(dims, num_heads, window_size), dims, mlp_ratio, drop_path[0])
        self.channel = DualBlock(ChannelAttention(dims, num_heads), dims, mlp_ratio, drop_path[1])

    def forward(self, x: torch.Tensor, with_cp: bool = False) -> torch.Tensor:
        for block in (self.spatial, self.channel):
            if with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class DaViTStage(nn.Module):

    def __init__(self, in_dims: int, dims: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop_path: Sequence[float], downsample: bool):
        super().__init__()
        self.downsample = Downsample(in_dims, dims) if downsample else None
        self.blocks = nn.ModuleList(
            DaViTLayer(dims, num_heads, window_size, mlp_ratio, (drop_path[2 * j], drop_path[2 * j + 1]))
            for j in range(depth))

    def forward(self, x: torch.Tensor, with_cp: bool = False) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for layer in self.blocks:
            x = layer(x, with_cp)
        return x


@MODELS.register_module()
class DaViT(BaseModule):
    """DaViT backbone emitting a feature pyramid (strides 4, 8, 16, 32; channels C, 2C, 4C, 8C).

    Args:
        arch (str | dict): ``tiny|t``, ``small|s``, ``base|b``, ``large|l``, ``huge|h``, ``giant|g``, or a
            dict with ``embed_dims``, ``depths``, ``num_heads`` (and ``window_size``).
        in_channels (int): Image channels. Default 3.
        window_size (int, optional): Overrides the arch's window size (7 for T/S/B, 12 for L/H/G).
        mlp_ratio (float): MLP hidden size over dims. Default 4.
        out_indices (Sequence[int]): Stages to output (negatives count from the end); each gets a
            LayerNorm ``norm{i}``. Default (0, 1, 2, 3).
        drop_path_rate (float): Stochastic depth, linear over the 2 * sum(depths) blocks (official).
        frozen_stages (int): -1 freezes nothing; k freezes the stem and stages 0..k (downsample,
            blocks, output norm) and keeps them in eval mode.
        norm_eval (bool): Keep the LayerNorms in eval mode while training (they hold no running stats,
            so this only matters for subclasses that add BatchNorm). Default False.
        with_cp (bool): Gradient checkpointing in every spatial and channel block.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=PATH)``; official, timm,
            mmpretrain and mmdavit checkpoints are all accepted (see ``mmdavit.models.checkpoints``).

    Example:
        >>> import torch
        >>> from mmdavit.models import DaViT
        >>> model = DaViT('tiny').eval()
        >>> for feat in model(torch.rand(1, 3, 97, 131)):
        ...     print(tuple(feat.shape))
        (1, 96, 25, 33)
        (1, 192, 13, 17)
        (1, 384, 7, 9)
        (1, 768, 4, 5)
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 window_size: Optional[int] = None,
                 mlp_ratio: float = 4.0,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.1,
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        spec = resolve_arch(arch)
        if window_size is not None:
            spec['window_size'] = window_size
        if not isinstance(spec['window_size'], int) or spec['window_size'] <= 0:
            raise ValueError(f'DaViT window_size must be a positive int, got {spec["window_size"]!r}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'DaViT drop_path_rate must be in [0, 1), got {drop_path_rate}')
        depths, num_heads = tuple(spec['depths']), tuple(spec['num_heads'])
        num_stages = len(depths)
        dims = [spec['embed_dims'] * 2**i for i in range(num_stages)]
        for i, (d, h) in enumerate(zip(dims, num_heads)):
            if d % h:
                raise ValueError(f'DaViT stage {i} has {d} channels, not divisible by num_heads={h}')

        self.arch = spec
        self.depths = depths
        self.num_stages = num_stages
        self.embed_dims = dims
        self.in_channels = in_channels
        self.out_indices = self._normalise_out_indices(out_indices, num_stages)
        if not -1 <= frozen_stages < num_stages:
            raise ValueError(f'DaViT frozen_stages must be in [-1, {num_stages - 1}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.drop_path_rates = drop_path_schedule(drop_path_rate, depths)

        self.stem = Stem(in_channels, dims[0])
        self.stages = nn.ModuleList()
        first_block = 0
        for i in range(num_stages):
            rates = self.drop_path_rates[2 * first_block:2 * (first_block + depths[i])]
            self.stages.append(
                DaViTStage(dims[i - 1] if i else dims[0], dims[i], depths[i], num_heads[i], spec['window_size'],
                           mlp_ratio, rates, downsample=i > 0))
            first_block += depths[i]
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))
        self._freeze_stages()

    @staticmethod
    def _normalise_out_indices(out_indices: Sequence[int], num_stages: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        result = []
        for index in out_indices:
            if not -num_stages <= index < num_stages:
                raise ValueError(f'DaViT out_indices entry {index} is out of range for {num_stages} stages '
                                 f'(valid: {-num_stages}..{num_stages - 1})')
            result.append(index % num_stages)
        if len(set(result)) != len(result):
            raise ValueError(f'DaViT out_indices {tuple(out_indices)} name a stage twice')
        return tuple(sorted(result))

    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            from mmdavit.models.checkpoints import load_pretrained
            load_pretrained(self, self.init_cfg['checkpoint'], prefix=self.init_cfg.get('prefix'))
            self._is_init = True
            return
        super().init_weights()
        if self.init_cfg is None:
            self.apply(_init_module)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if images.dim() != 4:
            raise ValueError(f'DaViT expects a 4-D (B, C, H, W) tensor, got shape {tuple(images.shape)}')
        if images.shape[1] != self.in_channels:
            raise ValueError(f'DaViT expects {self.in_channels} input channels, got {images.shape[1]} '
                             f'(set in_channels={images.shape[1]})')
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f'DaViT got an empty input of shape {tuple(images.shape)}')
        x = self.stem(images)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x, self.with_cp and self.training)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous())
            if i == self.out_indices[-1]:
                break
        return tuple(outs)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.stem]
        for i in range(self.frozen_stages + 1):
            modules.append(self.stages[i])
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        return modules

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id for layer-wise LR decay: stem 0, DaViT layer (spatial + channel block) k -> k + 1
        (a downsample with the first layer of the stage it feeds, ``norm{i}`` with the last layer of
        stage i), anything else -> ``num_layers - 1``.

        Returns:
            (layer_id, num_layers)
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        parts = name.split('.')
        if parts[0] == 'stem':
            return 0, num_layers
        if parts[0] == 'stages':
            stage = int(parts[1])
            first = sum(self.depths[:stage])
            if parts[2] == 'blocks':
                return first + int(parts[3]) + 1, num_layers
            return first + 1, num_layers  # downsample
        if parts[0].startswith('norm') and parts[0][4:].isdigit():
            return sum(self.depths[:int(parts[0][4:]) + 1]), num_layers
        return num_layers - 1, num_layers

    def get_stage_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Stage id for stage-wise LR decay: stem 0, stage i (downsample, blocks, ``norm{i}``) -> i + 1,
        anything else -> ``num_stages + 1``.

        Returns:
            (stage_id, num_stages + 2)
        """
        total = self.num_stages + 2
        if not param_name.startswith(prefix):
            return total - 1, total
        parts = param_name[len(prefix):].split('.')
        if parts[0] == 'stem':
            return 0, total
        if parts[0] == 'stages':
            return int(parts[1]) + 1, total
        if parts[0].startswith('norm') and parts[0][4:].isdigit():
            return int(parts[0][4:]) + 1, total
        return total - 1, total


def drop_path_schedule(drop_path_rate: float, depths: Sequence[int]) -> List[float]:
    """Official schedule: linear over 2 * sum(depths) blocks; layer j's spatial block gets 2j, its
    channel block 2j + 1."""
    num_blocks = 2 * sum(depths)
    return [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]


def _init_module(module: nn.Module):
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
