"""Layer-wise learning-rate decay for detectors, segmentors and classifiers built on a layered backbone.

mmpretrain's constructor asks the *whole model* for ``get_layer_depth`` (detectors and segmentors have
none) and mmdet's / mmseg's know only ConvNeXt and BEiT. This one asks ``model.backbone`` how deep each of
its parameters is and puts everything outside the backbone (neck, heads) on the top layer id, at the full
learning rate.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper

from mmdavit.registry import OPTIM_WRAPPER_CONSTRUCTORS

DEPTH_METHODS = {'layer_wise': 'get_layer_depth', 'stage_wise': 'get_stage_depth'}
PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers', 'flat_decay_mult', 'custom_keys')
# mmengine's per-kind rules, which this constructor replaces by flat_decay_mult and custom_keys
MMENGINE_RULES = ('bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult', 'dcn_offset_lr_mult')
# param-group fields the constructor (and the lr schedulers) own: a custom key setting them would corrupt
# the decay and its checks
BOOKKEEPING_KEYS = ('params', 'group_name', 'layer_id', 'lr_scale', 'initial_lr')
BACKBONE_PREFIX = 'backbone.'
TOP_NAME = 'head'  # the top layer id: neck and heads


def layer_name(layer_id: int, max_id: int) -> str:
    """``layer_{id}`` below the top id, ``head`` at it (shared by the table, group names and the hook)."""
    return TOP_NAME if layer_id == max_id else f'layer_{layer_id}'


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DaViTLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor with layer-wise (or stage-wise) learning-rate decay.

    The layer id of a backbone parameter comes from ``model.backbone.get_layer_depth(name, 'backbone.')``
    (``get_stage_depth`` for ``decay_type='stage_wise'``); for ``mmdavit.DaViT`` the stem is 0, each
    spatial + channel block pair one layer, a downsample goes with the stage it feeds and an output norm
    with its stage. Every other parameter (neck, heads) gets the top id ``max_id = num_layers - 1``, so::

        lr = base_lr * decay_rate ** (max_id - layer_id) * lr_mult
        weight_decay = base_wd * decay_mult                # parameter matched by a custom key
        weight_decay = base_wd * flat_decay_mult           # other 1-D parameters (norm weights, biases)
        weight_decay = base_wd                             # other parameters

    where ``lr_mult`` / ``decay_mult`` come from the longest matching ``custom_keys`` entry (1 when absent).
    As in mmengine's ``DefaultOptimWrapperConstructor``, a custom key's ``decay_mult`` *replaces* the
    1-D rule for the parameters it matches (``custom_keys={'.bias': dict(decay_mult=1.0)}`` turns weight
    decay back on for biases), while its ``lr_mult`` multiplies the layer decay. ``lr_mult=0`` freezes what it
    matches (those groups are shown with lr 0 and left out of the hook's ratio checks). Parameters with
    ``requires_grad=False`` (frozen stages) are left out. Each param group carries
    ``group_name``, ``layer_id`` and ``lr_scale`` (the decay factor alone), which
    :class:`~mmdavit.engine.LayerDecayLRHook` checks and logs; the returned wrapper's ``layer_decay_groups``
    records what was built, for the hook's resume check. A table of the groups is logged on build.

    Args:
        optim_wrapper_cfg (dict): The ``optim_wrapper`` config; its optimizer needs ``lr`` and
            ``weight_decay``.
        paramwise_cfg (dict): ``decay_rate`` (float in (0, 1], required); ``decay_type``
            (``'layer_wise'``, default, or ``'stage_wise'``); ``num_layers`` (int, optional: number of layer
            ids including stem and top, checked against the backbone's); ``flat_decay_mult`` (float,
            default 0: weight-decay multiplier of norm weights, biases and other 1-D parameters that no
            custom key matches);
            ``custom_keys`` (dict: substring of a parameter name -> ``dict(lr_mult=..., decay_mult=...)``
            and any other optimizer settings such as ``betas``; not ``lr`` / ``weight_decay``, which would undo
            the decay, nor the fields the constructor sets: ``params``, ``group_name``, ``layer_id``,
            ``lr_scale``, ``initial_lr``).

    Example:
        >>> optim_wrapper = dict(
        ...     optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
        ...     constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
        ...     paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise',
        ...                        custom_keys={'rpn_head': dict(lr_mult=2.0)}))
        >>> custom_imports = dict(imports=['mmdavit'])
        >>> custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        cfg = self.paramwise_cfg
        self.decay_rate = float(cfg['decay_rate'])
        self.decay_type = cfg.get('decay_type', 'layer_wise')
        self.num_layers = cfg.get('num_layers')
        self.flat_decay_mult = float(cfg.get('flat_decay_mult', 0.0))
        self.custom_keys: Dict[str, dict] = cfg.get('custom_keys', {})
        # longest key wins, ties alphabetically (mmengine's rule)
        self.sorted_custom_keys = sorted(sorted(self.custom_keys), key=len, reverse=True)
        self.built_groups: List[dict] = []

    def _validate_cfg(self) -> None:
        name = type(self).__name__
        cfg = self.paramwise_cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'{name}: paramwise_cfg must be a dict with decay_rate, got {type(cfg).__name__}')
        unknown = sorted(set(cfg) - set(PARAMWISE_KEYS))
        if unknown:
            rules = sorted(set(unknown) & set(MMENGINE_RULES))
            hint = (f' mmengine\'s {rules} are replaced here by flat_decay_mult (weight-decay multiplier of every '
                    '1-D parameter: norm weights and biases, default 0) and custom_keys, whose decay_mult replaces '
                    'flat_decay_mult and whose lr_mult multiplies the layer decay for the parameters whose names '
                    "contain the key, e.g. custom_keys={'.bias': dict(decay_mult=1.0)} or "
                    "{'norm': dict(decay_mult=0.5)}" if rules else '')
            raise ValueError(f'{name}: unknown paramwise_cfg keys {unknown}; it takes {list(PARAMWISE_KEYS)}.{hint}')
        if 'decay_rate' not in cfg:
            raise ValueError(f'{name}: paramwise_cfg.decay_rate is required (e.g. decay_rate=0.9); layer id i '
                             'trains at lr * decay_rate ** (max_id - i)')
        if not 0.0 < float(cfg['decay_rate']) <= 1.0:
            raise ValueError(f'{name}: paramwise_cfg.decay_rate must be in (0, 1], got {cfg["decay_rate"]} '
                             '(1 disables the decay)')
        if cfg.get('decay_type', 'layer_wise') not in DEPTH_METHODS:
            raise ValueError(f'{name}: paramwise_cfg.decay_type must be one of {list(DEPTH_METHODS)}, '
                             f'got {cfg["decay_type"]!r}')
        num_layers = cfg.get('num_layers')
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 2):
            raise ValueError(f'{name}: paramwise_cfg.num_layers must be an int >= 2 or left out, '
                             f'got {num_layers!r}')
        if float(cfg.get('flat_decay_mult', 0.0)) < 0:
            raise ValueError(f'{name}: paramwise_cfg.flat_decay_mult must be >= 0, got {cfg["flat_decay_mult"]}')
        if self.base_lr is None or self.base_wd is None:
            raise ValueError(f'{name}: the optimizer config needs explicit lr and weight_decay (got lr='
                             f'{self.base_lr}, weight_decay={self.base_wd}); set weight_decay=0 for none')
        super()._validate_cfg()  # custom_keys is a dict
        for key, custom in cfg.get('custom_keys', {}).items():
            if not isinstance(custom, dict):
                raise TypeError(f'{name}: custom_keys[{key!r}] must be a dict such as dict(lr_mult=0.1), got '
                                f'{custom!r}')
            absolute = {'lr', 'weight_decay'} & set(custom)
            if absolute:
                raise ValueError(f'{name}: custom_keys[{key!r}] sets {sorted(absolute)} absolutely, which would '
                                 'undo the layer decay; use lr_mult / decay_mult instead')
            reserved = sorted(set(BOOKKEEPING_KEYS) & set(custom))
            if reserved:
                raise ValueError(f'{name}: custom_keys[{key!r}] sets {reserved}, which the constructor sets itself '
                                 '(layer id and lr_scale from the backbone\'s layer depth, the group name, its '
                                 'parameters; initial_lr belongs to the lr schedulers). Use lr_mult / decay_mult '
                                 'and optimizer settings such as betas in custom_keys')
            for mult in ('lr_mult', 'decay_mult'):
                value = custom.get(mult, 1.0)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f'{name}: custom_keys[{key!r}].{mult} must be a number >= 0 (0 freezes / '
                                     f'disables), got {value!r}')

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        # What the config built, for LayerDecayLRHook: on resume torch keeps the checkpoint's group
        # settings, so a changed decay config would otherwise be ignored silently.
        optim_wrapper.layer_decay_groups = self.built_groups
        return optim_wrapper

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        """Append one param group per (layer id, weight-decay multiplier, custom key) of ``module``.

        Args:
            params (list[dict]): Param groups, extended in place.
            module (nn.Module): The whole model (already unwrapped from DDP by ``__call__``).
            prefix (str): Unused; the model is walked once with ``named_parameters``.
        """
        backbone, depth_of = self._layer_depth_fn(module)
        layer_ids, num_layers = self._layer_ids(module, backbone, depth_of)
        max_id = num_layers - 1
        groups: Dict[Tuple[int, float, Optional[str]], dict] = {}
        num_frozen = 0
        for name, param in module.named_parameters():
            if not param.requires_grad:
                num_frozen += 1
                continue
            custom_key = next((key for key in self.sorted_custom_keys if key in name), None)
            if custom_key is not None:  # mmengine: a custom key's decay_mult replaces the other rules
                decay_mult = float(self.custom_keys[custom_key].get('decay_mult', 1.0))
            else:
                decay_mult = self.flat_decay_mult if param.ndim <= 1 else 1.0
            group_key = (layer_ids[name], decay_mult, custom_key)
            if group_key not in groups:
                groups[group_key] = self._new_group(layer_ids[name], max_id, decay_mult, custom_key)
            groups[group_key]['params'].append(param)
        # bottom layer first; within a layer decayed before not decayed, custom keys last (deterministic,
        # so a resumed run rebuilds the groups in the checkpoint's order)
        ordered = [groups[key] for key in sorted(groups, key=lambda key: (key[0], key[2] or '', -key[1]))]
        params.extend(ordered)
        self.built_groups = [
            dict(group_name=g['group_name'], layer_id=g['layer_id'], lr_scale=g['lr_scale'],
                 num_tensors=len(g['params'])) for g in ordered
        ]
        header = (f'{type(self).__name__}: {self.decay_type} decay over {num_layers} layer ids of '
                  f'{type(backbone).__name__} (0 = stem, {max_id} = {TOP_NAME}), '
                  f'lr = {self.base_lr:g} * {self.decay_rate:g} ** ({max_id} - layer_id) * lr_mult')
        frozen_by_key = sum(len(g['params']) for g in ordered if g.get('lr_mult', 1.0) == 0)
        footer = [f'{num_frozen} frozen tensors (requires_grad=False) left out' if num_frozen else '',
                  f'{frozen_by_key} tensors frozen by custom_keys lr_mult=0 (lr 0)' if frozen_by_key else '']
        print_log('\n'.join(filter(None, [header, format_groups_table(ordered), *footer])), logger='current')

    def _layer_depth_fn(self, model: nn.Module) -> Tuple[nn.Module, Callable]:
        method = DEPTH_METHODS[self.decay_type]
        backbone = getattr(model, 'backbone', None)
        if not isinstance(backbone, nn.Module):
            raise TypeError(f'{type(self).__name__}: {type(model).__name__} has no `backbone` module, but '
                            f'layer ids come from model.backbone.{method}(); use it with a detector, segmentor '
                            'or classifier built on such a backbone, or drop constructor= for the default one')
        if not callable(getattr(backbone, method, None)):
            raise TypeError(f'{type(self).__name__}: the backbone {type(backbone).__name__} of '
                            f'{type(model).__name__} has no {method}(param_name, prefix) for '
                            f'decay_type={self.decay_type!r}; use a backbone that defines it (e.g. mmdavit.DaViT)')
        return backbone, getattr(backbone, method)

    def _layer_ids(self, model: nn.Module, backbone: nn.Module, depth_of: Callable) -> Tuple[Dict[str, int], int]:
        """Layer id of every parameter (frozen ones too) and the number of layer ids."""
        backbone_ids, counts = {}, set()
        for name, _ in model.named_parameters():
            if name.startswith(BACKBONE_PREFIX):
                backbone_ids[name], num_layers = depth_of(name, BACKBONE_PREFIX)
                counts.add(num_layers)
        method = f'{type(backbone).__name__}.{DEPTH_METHODS[self.decay_type]}()'
        if len(counts) != 1:
            raise ValueError(f'{type(self).__name__}: {method} must report one layer count for all backbone '
                             f'parameters, got {sorted(counts)}')
        num_layers = counts.pop()
        if self.num_layers is not None and self.num_layers != num_layers:
            raise ValueError(f'{type(self).__name__}: paramwise_cfg.num_layers={self.num_layers} does not match '
                             f'{method}, which gives {num_layers} layer ids (0 = stem ... {num_layers - 1} = '
                             f'{TOP_NAME}) for decay_type={self.decay_type!r}; set num_layers={num_layers} or '
                             'leave it out')
        bad = {name: i for name, i in backbone_ids.items() if not 0 <= i < num_layers}
        if bad:
            raise ValueError(f'{type(self).__name__}: {method} gave layer ids outside [0, {num_layers}) for {bad}')
        layer_ids = {name: backbone_ids.get(name, num_layers - 1) for name, _ in model.named_parameters()}
        return layer_ids, num_layers

    def _new_group(self, layer_id: int, max_id: int, decay_mult: float, custom_key: Optional[str]) -> dict:
        custom = self.custom_keys.get(custom_key, {})
        lr_scale = self.decay_rate**(max_id - layer_id)
        decay_name = 'decay' if decay_mult == 1 else 'no_decay' if decay_mult == 0 else f'decay_x{decay_mult:g}'
        group_name = f'{layer_name(layer_id, max_id)}_{decay_name}' + (f'[{custom_key}]' if custom_key else '')
        group = dict(params=[], lr=self.base_lr * lr_scale * custom.get('lr_mult', 1.0),
                     weight_decay=self.base_wd * decay_mult, group_name=group_name, layer_id=layer_id,
                     lr_scale=lr_scale)
        # other custom settings (e.g. betas) ride along; lr_mult stays so the hook can divide it out
        group.update({key: value for key, value in custom.items() if key != 'decay_mult'})
        return group


def format_groups_table(groups: List[dict]) -> str:
    """A compact text table of layer-decay param groups: one row per group."""
    header = ('group', 'layer', 'lr_scale', 'lr', 'weight_decay', 'tensors', 'params')
    rows = [(g['group_name'], str(g['layer_id']), f'{g["lr_scale"]:.4g}', f'{g["lr"]:.4g}',
             f'{g["weight_decay"]:.4g}', str(len(g['params'])), f'{sum(p.numel() for p in g["params"]):,}')
            for g in groups]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return '\n'.join(lines)

