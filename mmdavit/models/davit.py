"""DaViT: Dual Attention Vision Transformer (Ding et al., ECCV 2022) as a dense-prediction backbone.

Modules are in data-flow order. Tokens travel between modules as ``(B, H, W, C)`` tensors: LayerNorm and
Linear act on the last dim without copies, and ``x.permute(0, 3, 1, 2)`` is a channels-last NCHW view
that the depthwise and patch convolutions take without a layout copy.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

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


def recording_graph() -> bool:
    """True while ``torch.jit.trace`` or the ONNX exporter records the forward. The CPU fast paths below
    (in-place updates, per-sample and per-band loops) would be recorded as a fixed, mutating graph, so those
    recorders get the plain computation, which gives the same numbers."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def may_update_in_place() -> bool:
    """Without autograd (and outside a graph recorder) a module may write into its own temporaries."""
    return not torch.is_grad_enabled() and not recording_graph()


def tokens_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` tokens -> contiguous ``(B, C, H, W)``, copied sample by sample as 2-D transposes:
    PyTorch's CPU copy has a blocked kernel for those, 3x faster than its generic 4-D permute copy."""
    if x.device.type != 'cpu' or recording_graph():
        return x.permute(0, 3, 1, 2).contiguous()
    batch, height, width, dims = x.shape
    out = x.new_empty(batch, dims, height, width)
    for i in range(batch):
        out[i].view(dims, height * width).copy_(x[i].reshape(height * width, dims).t())
    return out


def conv_tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW convolution to ``(B, H, W, C)`` tokens, returning ``(B, H', W', C')``."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FlushNegligible(torch.autograd.Function):
    """Identity, except that entries below 2^-64 of the tensor's largest magnitude become exact zeros, in
    the value and in its gradient. Such entries move no sum they enter (fp32 resolves 2^-24; outputs stay
    bitwise the same), but they breed subnormal numbers, on which x86 GEMMs run up to 10x slower.

    Channel attention needs it: its logits sum over all tokens, so at 800x1344 80-96% of the softmax entries
    of strides 4-16 (and of the logits' gradient) are that small, some subnormal. Flushing them made
    forward+backward 1.35x faster there on one CPU core.
    """

    @classmethod
    def apply(cls, x: torch.Tensor) -> torch.Tensor:
        return x if recording_graph() else super().apply(x)  # exported graphs: identity, same outputs

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _zero_negligible(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _zero_negligible(grad)


def _zero_negligible(x: torch.Tensor) -> torch.Tensor:
    magnitude = x.abs()
    return x.masked_fill(magnitude < magnitude.amax() * 2.0**-64, 0.0)


# Bands of about this many tokens keep a branch's wide intermediates (4C MLP hidden, 3C qkv) in cache.
BAND_TOKENS = 2048


def add_in_bands(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                 multiple: Optional[int] = 1) -> torch.Tensor:
    """``x + branch(x)``. A ``branch`` that treats bands of ``multiple`` rows independently (a per-token MLP:
    1; window attention: the window size; None for one that mixes all rows) is computed one band of about
    ``BAND_TOKENS`` tokens at a time, bitwise the same as all rows at once.

    Bands only on one CPU thread: there the 4C-wide MLP hidden activations (3C qkv) of a band stay in cache
    between fc1, GELU and fc2 instead of being allocated, page-faulted and streamed at full size (alone, the
    stage-0 MLP residual at 800x1344 takes 100 ms instead of 220 ms; the backbone's forward+backward 7%
    less). With more threads every op of every band is a thread synchronisation: on a busy 2-core machine
    that made the forward up to 2x slower. GPUs would only see more kernel launches.

    Without autograd the sums are written into ``x``, which must therefore be a temporary of the caller.
    """
    batch, height, width, _ = x.shape
    rows = height if multiple is None else -(-BAND_TOKENS // (batch * width * multiple)) * multiple
    in_place = may_update_in_place()
    if rows >= height or x.device.type != 'cpu' or torch.get_num_threads() > 1 or recording_graph():
        return x.add_(branch(x)) if in_place else x + branch(x)
    bands = x.split(rows, dim=1)
    if not in_place:
        return torch.cat([band + branch(band) for band in bands], dim=1)
    for band in bands:
        band += branch(band)
    return x


class DropPath(nn.Module):
    """Stochastic depth per sample: residual branches are dropped whole during training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def sample_scale(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample factor (0 or 1 / keep) broadcastable to ``x``, or None when nothing is dropped."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep = 1.0 - self.drop_prob
        return x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale

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
        out = conv_tokens(self.proj, x)
        if not may_update_in_place() or out.dtype != x.dtype:
            return x + out
        return out.add_(x)  # no autograd: add into the conv output rather than allocate the sum


class Mlp(nn.Module):

    def __init__(self, dims: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dims * mlp_ratio)
        self.fc1 = nn.Linear(dims, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        if not may_update_in_place():
            return self.fc2(self.act(hidden))
        return self.fc2(torch.ops.aten.gelu_(hidden))  # no autograd: GELU in place, one 4C buffer fewer


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
        # Strided (windows, heads, tokens, head_dims) views of the qkv output. Unbinding the "3" dim in place
        # lets autograd stack the three gradients straight into qkv's layout, with no further copy.
        q, k, v = self.qkv(windows).view(-1, ws * ws, 3, self.num_heads, dims // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
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
        groups, group_dims = self.num_groups, dims // self.num_groups
        # Views of the qkv output, no copies; autograd's unbind backward stacks straight into qkv's layout.
        q, k, v = self.qkv(x).view(batch, height * width, 3, groups, group_dims).unbind(2)  # (B, N, G, C_g)
        # Scaling k before the matmul, on these layouts, reproduces the reference's rounding bit for bit:
        # the logits sum over all tokens and the softmax would amplify any change.
        logits = FlushNegligible.apply((k * self.scale).permute(0, 2, 3, 1) @ v.transpose(1, 2))
        attn = FlushNegligible.apply(logits.softmax(dim=-1))  # (B, G, C_g, C_g)
        out = (attn @ q.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).reshape(batch, height, width, dims)
        return self.proj(out)


class DualBlock(nn.Module):
    """One half of a DaViT layer: ``x + cpe1``; attention residual; ``x + cpe2``; MLP residual.

    On one CPU thread the MLP residual, and the residual of window attention (windows never straddle a band
    of whole window rows), are computed band by band (``add_in_bands``).
    """

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
        # The cpe outputs are new tensors of this block, which add_in_bands may then update in place.
        x = self.cpe1(x)
        # Channel attention mixes all tokens: no bands (None).
        band_multiple = self.attn.window_size if isinstance(self.attn, WindowAttention) else None
        x = self._residual(x, lambda t: self.attn(self.norm1(t)), band_multiple)
        x = self.cpe2(x)
        return self._residual(x, lambda t: self.mlp(self.norm2(t)), 1)

    def _residual(self, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                  band_multiple: Optional[int]) -> torch.Tensor:
        """``x + drop_path(branch(x))`` through ``add_in_bands``."""
        scale = self.drop_path.sample_scale(x)  # drawn once: every band drops the same samples
        if scale is not None:
            branch = (lambda t, f=branch: f(t) * scale)
        return add_in_bands(x, branch, band_multiple)


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
                outs.append(tokens_to_nchw(getattr(self, f'norm{i}')(x)))
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
