"""DaViT: Dual Attention Vision Transformer (Ding et al., ECCV 2022) as a dense-prediction backbone: the arch
zoo (the paper's sizes and Florence-2's vision towers), its resolution, and the ``DaViT`` module.

The blocks are in ``mmdavit.models.layers``, their CPU fast paths in ``mmdavit.models.fast_paths``.
"""
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.model.weight_init import PretrainedInit, initialize, trunc_normal_

from mmdavit.compat import autocast_enabled
from mmdavit.models.fast_paths import tokens_to_nchw
from mmdavit.models.layers import (ChannelAttention, ChannelAttentionV2, DaViTStage, OverlapDownsample,
                                   PatchDownsample, Stem, WindowAttention)
from mmdavit.registry import MODELS

__all__ = ['ARCH_ZOO', 'ARCH_ALIASES', 'DaViT', 'WindowAttention', 'resolve_arch']

# The two switches an arch spec (or a custom arch dict) may set; the first value of each is classic DaViT.
DOWNSAMPLES = {'patch': PatchDownsample, 'overlap': OverlapDownsample}
CHANNEL_ATTENTIONS = {'v1': ChannelAttention, 'v2': ChannelAttentionV2}
FLORENCE2 = dict(window_size=12, downsample='overlap', channel_attention='v2')

ARCH_ZOO: Dict[str, dict] = {
    'tiny': dict(embed_dims=96, depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24), window_size=7),
    'small': dict(embed_dims=96, depths=(1, 1, 9, 1), num_heads=(3, 6, 12, 24), window_size=7),
    'base': dict(embed_dims=128, depths=(1, 1, 9, 1), num_heads=(4, 8, 16, 32), window_size=7),
    'large': dict(embed_dims=192, depths=(1, 1, 9, 1), num_heads=(6, 12, 24, 48), window_size=12),
    'huge': dict(embed_dims=256, depths=(1, 1, 9, 1), num_heads=(8, 16, 32, 64), window_size=12),
    'giant': dict(embed_dims=384, depths=(1, 1, 12, 3), num_heads=(12, 24, 48, 96), window_size=12),
    # Florence-2's vision towers (timm davit_base_fl / davit_huge_fl): DaViT-B and DaViT-H sizes.
    'florence2-base': dict(embed_dims=128, depths=(1, 1, 9, 1), num_heads=(4, 8, 16, 32), **FLORENCE2),
    'florence2-large': dict(embed_dims=256, depths=(1, 1, 9, 1), num_heads=(8, 16, 32, 64), **FLORENCE2),
}
ARCH_ALIASES = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large', 'h': 'huge', 'g': 'giant',
                'fl2-b': 'florence2-base', 'fl2-l': 'florence2-large'}
ARCH_DEFAULTS = dict(window_size=7, downsample='patch', channel_attention='v1')
REQUIRED_ARCH_KEYS = ('embed_dims', 'depths', 'num_heads')


def resolve_arch(arch: Union[str, dict]) -> dict:
    """Return ``dict(embed_dims, depths, num_heads, window_size, downsample, channel_attention)`` for an arch
    name, alias or dict (a dict may leave out the last three: classic DaViT's window 7, ``'patch'``, ``'v1'``)."""
    if not isinstance(arch, dict):
        name = ARCH_ALIASES.get(str(arch).lower(), str(arch).lower())
        if name not in ARCH_ZOO:
            aliases = {full: alias for alias, full in ARCH_ALIASES.items()}
            valid = ', '.join(f'{n} ({aliases[n]})' for n in ARCH_ZOO)
            raise ValueError(f'Unknown DaViT arch {arch!r}; valid names: {valid}, or a dict')
        arch = ARCH_ZOO[name]
    missing = [key for key in REQUIRED_ARCH_KEYS if key not in arch]
    if missing:
        raise ValueError(f'DaViT arch dict lacks {missing}; give embed_dims, depths, num_heads '
                         f'(and optionally {", ".join(ARCH_DEFAULTS)})')
    unknown = sorted(set(arch) - set(REQUIRED_ARCH_KEYS) - set(ARCH_DEFAULTS))
    if unknown:
        raise ValueError(f'DaViT arch dict has unknown keys {unknown}; valid keys: '
                         f'{", ".join(REQUIRED_ARCH_KEYS + tuple(ARCH_DEFAULTS))}')
    spec = {**ARCH_DEFAULTS, **arch}
    if len(spec['depths']) != len(spec['num_heads']):
        raise ValueError(f'DaViT arch has {len(spec["depths"])} depths but {len(spec["num_heads"])} '
                         'num_heads; give one of each per stage')
    spec['embed_dims'] = first_stage_width(spec['embed_dims'], len(spec['depths']))
    for key, choices in (('downsample', DOWNSAMPLES), ('channel_attention', CHANNEL_ATTENTIONS)):
        if spec[key] not in choices:
            raise ValueError(f'DaViT arch {key}={spec[key]!r} is not one of {", ".join(map(repr, choices))} '
                             f'(classic DaViT: {next(iter(choices))!r}; Florence-2: {FLORENCE2[key]!r})')
    return spec


def first_stage_width(embed_dims, num_stages: int) -> int:
    """``embed_dims`` is the first stage's width; each later stage doubles it. One width per stage (timm's
    habit) is taken when it doubles that way."""
    if isinstance(embed_dims, int) and not isinstance(embed_dims, bool) and embed_dims > 0:
        return embed_dims
    widths = tuple(embed_dims) if isinstance(embed_dims, (list, tuple)) else ()
    if widths and isinstance(widths[0], int) and widths[0] > 0:
        doubling = tuple(widths[0] * 2**i for i in range(num_stages))
        if widths == doubling:
            return widths[0]
        raise ValueError(f'DaViT arch embed_dims={embed_dims!r}: DaViT doubles the width at every stage, so give the '
                         f'first stage\'s width, embed_dims={widths[0]}, or {num_stages} widths doubling that way, '
                         f'{doubling}')
    raise ValueError(f'DaViT arch embed_dims must be a positive int, the first stage\'s width (each later stage '
                     f'doubles it, e.g. 96 for DaViT-T: 96, 192, 384, 768), got {embed_dims!r}')


@MODELS.register_module()
class DaViT(BaseModule):
    """DaViT backbone emitting a feature pyramid (strides 4, 8, 16, 32; channels C, 2C, 4C, 8C).

    Args:
        arch (str | dict): ``tiny|t``, ``small|s``, ``base|b``, ``large|l``, ``huge|h``, ``giant|g``,
            Florence-2's vision towers ``florence2-base|fl2-b`` and ``florence2-large|fl2-l``, or a dict with
            ``embed_dims`` (the first stage's width; each stage doubles it, and a per-stage tuple that
            does so is taken too), ``depths``, ``num_heads`` and optionally ``window_size`` (7),
            ``downsample`` (``'patch'``: 2x2 stride 2, classic; ``'overlap'``: 3x3 stride 2 padding 1,
            Florence-2) and ``channel_attention`` (``'v1'``: classic; ``'v2'``: Florence-2's, scaled by
            the stage's token count).
        in_channels (int): Image channels. Default 3.
        window_size (int, optional): Overrides the arch's window size (7 for T/S/B, 12 for L/H/G and
            Florence-2).
        mlp_ratio (float): MLP hidden size over dims. Default 4.
        out_indices (Sequence[int]): Stages to output (negatives count from the end); each gets a
            LayerNorm ``norm{i}``. Stages after the last one are not built (a checkpoint's weights for them
            are skipped when loading). Default (0, 1, 2, 3).
        drop_path_rate (float): Stochastic depth, linear over the 2 * sum(depths) blocks (official).
        frozen_stages (int): -1 freezes nothing; k freezes the stem and stages 0..k (downsample,
            blocks, output norm) and keeps them in eval mode.
        norm_eval (bool): Keep the LayerNorms in eval mode while training (they hold no running stats,
            so this only matters for subclasses that add BatchNorm). Default False.
        with_cp (bool): Gradient checkpointing in every spatial and channel block.
        init_cfg (dict | list[dict], optional): None: the official initialisation (truncated normal
            Linear, std 0.02). mmengine initialisers (e.g. ``dict(type='Kaiming', layer='Conv2d')``) override
            it for the layers they name; ``dict(type='Pretrained', checkpoint=PATH, prefix=None)`` loads
            weights, after any other initialiser of the list (as mmengine orders it). ``PATH`` is a file in
            any format of ``docs/checkpoint-formats.md`` (official, timm, mmpretrain, Florence-2, mmdavit;
            torch, safetensors or sharded), a name such as ``'hf-hub://timm/davit_tiny.msft_in1k'`` or a
            URL of mmengine's ``CheckpointLoader`` (``https://``, ``s3://`` ...). A checkpoint that gives less
            than half of the weights is refused unless the entry says ``allow_partial=True``.

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
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        split_init_cfg(init_cfg)  # a malformed init_cfg fails here, at build time
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
        # Stages after the last output are not built: they would never run, and under DDP their parameters
        # would wait for gradients forever ("Expected to have finished reduction in the prior iteration").
        # Checkpoints that have them still load: their keys are dropped, with one line in the log.
        self.stages = nn.ModuleList()
        first_block = 0
        for i in range(self.out_indices[-1] + 1):
            rates = self.drop_path_rates[2 * first_block:2 * (first_block + depths[i])]
            self.stages.append(
                DaViTStage(dims[i - 1] if i else dims[0], dims[i], depths[i], num_heads[i], spec['window_size'],
                           mlp_ratio, rates, downsample=DOWNSAMPLES[spec['downsample']] if i else None,
                           channel_attention=CHANNEL_ATTENTIONS[spec['channel_attention']]))
            first_block += depths[i]
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))
        self._freeze_stages()
        self._register_load_state_dict_pre_hook(self._drop_unbuilt_stages)

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
        """The official initialisation, then the initialisers of ``init_cfg``, then its ``Pretrained``
        checkpoints through mmdavit's loader (which converts every supported format). Once only: a second
        call leaves the weights alone and logs mmengine's warning."""
        if self._is_init:
            super().init_weights()  # mmengine: warns that init_weights ran before, changes nothing
            return
        pretrained, initialisers = split_init_cfg(self.init_cfg)
        self.apply(_init_module)
        initialize(self, initialisers)
        if pretrained:
            from mmdavit.models.checkpoints import load_pretrained
            for cfg in pretrained:
                load_pretrained(self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                                allow_partial=cfg.get('allow_partial', False))
        self._is_init = True

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if images.dim() != 4:
            raise ValueError(f'DaViT expects a 4-D (B, C, H, W) tensor, got shape {tuple(images.shape)}')
        if images.shape[1] != self.in_channels:
            raise ValueError(f'DaViT expects {self.in_channels} input channels, got {images.shape[1]} '
                             f'(set in_channels={images.shape[1]})')
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f'DaViT got an empty input of shape {tuple(images.shape)}')
        self._check_dtype(images)
        x = self.stem(images)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x, self.with_cp and self.training)
            if i in self.out_indices:
                outs.append(tokens_to_nchw(getattr(self, f'norm{i}')(x)))
            if i == self.out_indices[-1]:
                break
        return tuple(outs)

    def _drop_unbuilt_stages(self, state_dict: dict, prefix: str, *args) -> None:
        """Drop a checkpoint's weights of the stages this model does not build (after its last output): their
        blocks and output norms."""
        unbuilt = re.compile(re.escape(prefix) + r'(?:stages\.|norm)(\d+)\.')
        dropped = [k for k in state_dict if (m := unbuilt.match(k)) and int(m.group(1)) >= len(self.stages)]
        if dropped:
            for key in dropped:
                del state_dict[key]
            print_log(f'DaViT: {len(dropped)} tensors of the checkpoint\'s stages from {len(self.stages)} on '
                      f'({dropped[0]}, ...) not loaded: out_indices={self.out_indices} ends at stage '
                      f'{len(self.stages) - 1}, and the stages after it are not built', logger='current')

    def _check_dtype(self, images: torch.Tensor):
        weights = self.stem.conv.weight.dtype
        if not images.is_floating_point():
            raise TypeError(f'DaViT expects floating-point images, got {images.dtype}: convert and normalise '
                            'them first (e.g. images.float(), then subtract the mean and divide by the std, as '
                            "mmdet's / mmseg's data_preprocessor does)")
        if images.dtype != weights and not autocast_enabled(images.device.type):
            raise TypeError(f'DaViT got {images.dtype} images but its weights are {weights}: cast the images '
                            f'(images.to({weights})), or the model (model.to({images.dtype})), or run under '
                            f"torch.autocast('{images.device.type}') for mixed precision")

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.stem]
        for i in range(min(self.frozen_stages + 1, len(self.stages))):
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


# map_location is accepted as in mmengine's PretrainedInit; our loader reads on the CPU, then copies.
# allow_partial: load a checkpoint that gives less than half of the weights (refused otherwise).
PRETRAINED_KEYS = {'type', 'checkpoint', 'prefix', 'map_location', 'allow_partial'}


def split_init_cfg(init_cfg: Union[dict, List[dict], None]) -> Tuple[List[dict], List[dict]]:
    """``(Pretrained configs, other initialiser configs)`` of a backbone ``init_cfg`` in any of mmengine's
    forms (None, a dict, a list of dicts), checked up front so that a typo fails at build time."""
    cfgs = [] if init_cfg is None else [init_cfg] if isinstance(init_cfg, dict) else init_cfg
    if not isinstance(cfgs, (list, tuple)) or not all(isinstance(cfg, dict) and 'type' in cfg for cfg in cfgs):
        raise TypeError(f'DaViT init_cfg must be None, a dict or a list of dicts, each with a "type", got '
                        f'{init_cfg!r}')
    pretrained = [cfg for cfg in cfgs if cfg['type'] in ('Pretrained', PretrainedInit)]
    for cfg in pretrained:
        if 'checkpoint' not in cfg:
            raise ValueError(f'DaViT init_cfg {cfg} has no checkpoint; give checkpoint=PATH or URL')
        unknown = set(cfg) - PRETRAINED_KEYS
        if unknown:
            raise ValueError(f'DaViT init_cfg {cfg} has unknown keys {sorted(unknown)}; a Pretrained entry takes '
                             f'{", ".join(sorted(PRETRAINED_KEYS))} (weights are read on the CPU and copied '
                             'into the model wherever it is)')
    return pretrained, [cfg for cfg in cfgs if cfg['type'] not in ('Pretrained', PretrainedInit)]


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
