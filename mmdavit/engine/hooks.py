"""Custom hooks for layer-wise learning-rate decay: check it is really on, and log each layer's lr."""
import logging
import math
from typing import Dict, List, Optional

from mmengine.hooks import Hook, LoggerHook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapperDict

from mmdavit.engine.layer_decay import layer_name
from mmdavit.registry import HOOKS


@HOOKS.register_module()
class LayerDecayLRHook(Hook):
    """Check that the optimizer carries layer-wise LR decay and log every layer's learning rate.

    At ``before_train`` it raises when

    - a param group has no ``layer_id`` / ``lr_scale`` (the config forgot
      ``constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor'``, so every layer trains at one lr);
    - ``lr_scale`` differs within a layer id or decreases from one layer id to the next;
    - the groups of a resumed checkpoint differ from those the config builds (torch keeps the checkpoint's
      ``lr`` and ``lr_scale``, so a changed ``decay_rate`` would be ignored silently);

    and warns when an lr scheduler has an absolute ``eta_min > 0``, which every group approaches at the end
    of the schedule, flattening the decay. At ``before_train`` and after every iteration (until it has
    warned once) it checks the decay itself: ``lr / (lr_scale * lr_mult)`` must be one value, the scheduled
    base lr, across all groups (and groups with ``lr_mult=0`` must stay at lr 0); schedulers that set absolute
    learning rates (``OneCycleLR(eta_max=...)``, ``ReduceOnPlateauLR(min_value=...)``) break that, and the
    warning names them. Then, at the logger interval, it records ``layer_{i}_lr`` for each layer id and
    ``head_lr`` for the top one (the lr before any custom ``lr_mult``; 0 for a layer that ``lr_mult=0``
    freezes entirely), so they appear in the text log, ``vis_data/scalars.json`` and every visualizer
    backend. The names end in ``lr`` because the log processor prints only such keys in scientific notation
    (others get 4 decimals: 6e-05 -> 0.0001).

    It needs the ``lr_scale`` each group of ``DaViTLayerDecayOptimWrapperConstructor`` carries (mmpretrain's
    ``LearningRateDecayOptimWrapperConstructor`` records only ``layer_id``: the hook refuses its groups).

    Args:
        interval (int, optional): Record every ``interval`` iterations (and at the end of each epoch).
            Defaults to the ``LoggerHook``'s interval, so each log line shows current values.

    Example:
        >>> custom_imports = dict(imports=['mmdavit'])
        >>> custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
        >>> # Iter(train) [ 50/1000]  base_lr: 1.0000e-04 lr: 4.7830e-05  layer_0_lr: 4.7830e-05 ...
        >>> #     layer_6_lr: 9.0000e-05  head_lr: 1.0000e-04  eta: ...
    """

    # NORMAL: after_train_iter runs before LoggerHook (BELOW_NORMAL) reads the scalars and before the
    # ParamSchedulerHook (LOW) steps, so the recorded lr is the one this iteration used.
    priority = 'NORMAL'

    def __init__(self, interval: Optional[int] = None):
        if interval is not None and (not isinstance(interval, int) or interval <= 0):
            raise ValueError(f'LayerDecayLRHook interval must be a positive int or None, got {interval!r}')
        self.interval = interval
        self.warned_ratios = False

    def before_train(self, runner) -> None:
        if isinstance(runner.optim_wrapper, OptimWrapperDict):
            raise TypeError('LayerDecayLRHook supports a single optimizer, got an OptimWrapperDict with '
                            f'{list(runner.optim_wrapper.optim_wrappers)}; remove the hook for this model')
        groups = runner.optim_wrapper.optimizer.param_groups
        scales = check_layer_groups(groups)
        check_resumed_groups(groups, getattr(runner.optim_wrapper, 'layer_decay_groups', None))
        warn_absolute_eta_min(runner.param_schedulers)
        self._check_ratios(runner, groups)
        if self.interval is None:
            self.interval = next((hook.interval for hook in runner.hooks if isinstance(hook, LoggerHook)), 10)
        bottom, top = min(scales), max(scales)
        print_log(f'LayerDecayLRHook: {len(scales)} layer ids, lr_scale {scales[bottom]:.4g} '
                  f'({layer_name(bottom, top)}) to {scales[top]:.4g} ({layer_name(top, top)}); logging '
                  f'{layer_name(bottom, top)}_lr ... {layer_name(top, top)}_lr every {self.interval} iterations',
                  logger='current')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self._check_ratios(runner, runner.optim_wrapper.optimizer.param_groups)
        if not (self.every_n_inner_iters(batch_idx, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            return
        for name, lr in layer_lrs(runner.optim_wrapper.optimizer.param_groups).items():
            runner.message_hub.update_scalar(f'train/{name}_lr', lr)

    def _check_ratios(self, runner, groups: List[dict]) -> None:
        """Warn once when the groups' learning rates stopped following the layer decay."""
        if self.warned_ratios:
            return
        problem = decay_ratio_problem(groups)
        if problem:
            self.warned_ratios = True
            print_log(f'LayerDecayLRHook (iteration {runner.iter}): {problem}. '
                      f'{absolute_lr_schedulers_hint(runner)}', logger='current', level=logging.WARNING)


def check_layer_groups(groups: List[dict]) -> Dict[int, float]:
    """Return ``{layer_id: lr_scale}``, raising when the groups do not describe a layer-wise decay."""
    missing = [i for i, g in enumerate(groups) if 'layer_id' not in g or 'lr_scale' not in g]
    if missing:
        raise RuntimeError(f'LayerDecayLRHook: {len(missing)} of {len(groups)} optimizer param groups carry no '
                           'layer_id / lr_scale, so layer-wise LR decay is off. Set optim_wrapper.constructor='
                           "'mmdavit.DaViTLayerDecayOptimWrapperConstructor' and paramwise_cfg=dict(decay_rate=...) "
                           '(with custom_imports=dict(imports=[\'mmdavit\'])), or remove this hook')
    scales: Dict[int, float] = {}
    for g in groups:
        scale = scales.setdefault(g['layer_id'], g['lr_scale'])
        if not math.isclose(scale, g['lr_scale'], rel_tol=1e-9):
            raise ValueError(f'LayerDecayLRHook: layer {g["layer_id"]} has groups with lr_scale {scale:.6g} and '
                             f'{g["lr_scale"]:.6g}; one layer id must have one scale (put per-parameter '
                             'factors in custom_keys lr_mult)')
    ids = sorted(scales)
    for lower, upper in zip(ids, ids[1:]):
        if scales[lower] > scales[upper] * (1 + 1e-9):
            raise ValueError(f'LayerDecayLRHook: lr_scale is not monotone: layer {lower} has {scales[lower]:.6g} '
                             f'> layer {upper} has {scales[upper]:.6g}. Deeper layers must not train slower: '
                             "check paramwise_cfg.decay_rate (<= 1) and the backbone's get_layer_depth")
    return scales


def check_resumed_groups(groups: List[dict], built: Optional[List[dict]]) -> None:
    """Raise when the optimizer's groups (after a resume) are not the ones the constructor built."""
    if built is None:
        return
    current = [dict(group_name=g.get('group_name'), layer_id=g['layer_id'], lr_scale=g['lr_scale'],
                    num_tensors=len(g['params'])) for g in groups]
    for index, (now, config) in enumerate(zip(current, built)):
        same = (now['group_name'], now['layer_id'], now['num_tensors']) == (
            config['group_name'], config['layer_id'], config['num_tensors'])
        if not same or not math.isclose(now['lr_scale'], config['lr_scale'], rel_tol=1e-9):
            raise RuntimeError(f'LayerDecayLRHook: optimizer param group {index} is {now} as resumed from the '
                               f'checkpoint, but the config builds {config}; torch keeps the checkpoint\'s lr, so '
                               'the new layer-decay settings would be ignored. Resume with the config that wrote '
                               'the checkpoint, or start a new schedule with load_from=... and resume=False')
    if len(current) != len(built):
        raise RuntimeError(f'LayerDecayLRHook: the optimizer has {len(current)} param groups but the config '
                           f'builds {len(built)}; resume with the config that wrote the checkpoint')


def warn_absolute_eta_min(param_schedulers) -> None:
    """Warn about lr schedulers whose absolute ``eta_min`` floor is shared by all layers."""
    if isinstance(param_schedulers, dict):
        param_schedulers = [s for schedulers in param_schedulers.values() for s in schedulers]
    for scheduler in param_schedulers or []:
        eta_min = getattr(scheduler, 'eta_min', None)
        if (getattr(scheduler, 'param_name', None) == 'lr' and eta_min and eta_min > 0
                and getattr(scheduler, 'eta_min_ratio', None) is None):
            print_log(f'LayerDecayLRHook: {type(scheduler).__name__} has eta_min={eta_min:g}, an absolute floor '
                      "shared by every param group: near the schedule's end all layers approach it and the "
                      'layer-wise decay flattens. Use eta_min=0 (or eta_min_ratio with CosineAnnealingLR) to '
                      'keep the per-layer ratios', logger='current', level=logging.WARNING)


RATIO_TOLERANCE = 1e-6  # relative; chained scheduler updates drift by ~1e-16 per step


def decay_ratio_problem(groups: List[dict]) -> str:
    """Why the groups' lrs do not follow the decay (``lr == base * lr_scale * lr_mult`` for one ``base``), or ''."""
    frozen_moving = [g for g in groups if g.get('lr_mult', 1.0) == 0 and g['lr'] != 0]
    if frozen_moving:
        g = frozen_moving[0]
        return (f'group {_group_label(g)} has lr_mult=0 (frozen by custom_keys) but lr {g["lr"]:.4g}: a scheduler '
                'set it')
    ratios = [(g['lr'] / (g['lr_scale'] * g.get('lr_mult', 1.0)), g) for g in groups
              if g.get('lr_mult', 1.0) != 0 and g['lr_scale'] != 0]
    if not ratios:
        return ''
    (low, low_group), (high, high_group) = min(ratios, key=lambda r: r[0]), max(ratios, key=lambda r: r[0])
    if high - low <= RATIO_TOLERANCE * abs(high):
        return ''
    return (f'the param groups\' learning rates no longer follow the layer-wise decay: lr / (lr_scale * lr_mult) '
            f'should be the scheduled base lr for every group, but is {high:.4g} for {_group_label(high_group)} and '
            f'{low:.4g} for {_group_label(low_group)} (layer_0_lr ... head_lr show it)')


def _group_label(group: dict) -> str:
    return group.get('group_name', f'layer {group["layer_id"]}')


ABSOLUTE_LR_SCHEDULERS = ('OneCycleLR', 'ReduceOnPlateauLR')


def absolute_lr_schedulers_hint(runner) -> str:
    schedulers = runner.param_schedulers
    if isinstance(schedulers, dict):
        schedulers = [s for group in schedulers.values() for s in group]
    found = sorted({type(s).__name__ for s in schedulers or [] if type(s).__name__ in ABSOLUTE_LR_SCHEDULERS})
    culprit = (f'This run uses {", ".join(found)}, which sets' if found else
               'Schedulers that set')
    return (f'{culprit} absolute learning rates (OneCycleLR(eta_max=...) takes every group to the same lr; '
            'ReduceOnPlateauLR(min_value=...) floors them all at one lr) and so erases the decay: use a scheduler '
            'that scales each group\'s lr (LinearLR, MultiStepLR, PolyLR / CosineAnnealingLR with eta_min=0 or '
            'eta_min_ratio), or give eta_max / min_value as a list with one value per param group')


def layer_lrs(groups: List[dict]) -> Dict[str, float]:
    """``{'layer_0': lr, ..., 'head': lr}``: each layer id's lr before custom ``lr_mult``, bottom first; 0 for a
    layer whose groups all have ``lr_mult=0``."""
    top = max(g['layer_id'] for g in groups)
    lrs: Dict[int, float] = {}
    # groups without a custom lr_mult first: their lr is the layer's own
    for g in sorted(groups, key=lambda g: 'lr_mult' in g):
        if g.get('lr_mult', 1.0) != 0:
            lrs.setdefault(g['layer_id'], g['lr'] / g.get('lr_mult', 1.0))
    for g in groups:
        lrs.setdefault(g['layer_id'], 0.0)  # frozen by lr_mult=0: it trains at lr 0
    return {layer_name(layer_id, top): lrs[layer_id] for layer_id in sorted(lrs)}
