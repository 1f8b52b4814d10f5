"""Optimizer wrappers under FSDP that act as under DDP: parameter groups of the unsharded model, gradient
clipping by the global norm.

* Groups: ``DaViTFSDPStrategy`` builds the optimizer wrapper (constructor, ``paramwise_cfg``) on the model
  before it shards it, so every rule sees the parameters as DDP's constructor does: their own names, their
  shapes (``flat_decay_mult`` and the other ``ndim == 1`` rules) and their modules (``norm_decay_mult``).
  With ``use_orig_params=True`` FSDP keeps those parameter objects (their data becomes this rank's shard), so
  the optimizer built on them steps the shards; :func:`check_optimizer_params` verifies it.
* Clipping: mmengine's ``OptimWrapper`` clips with ``torch.nn.utils.clip_grad_norm_`` over the parameters it
  holds, which under FSDP are this rank's shards: each rank would clip by (and log) the norm of its own shard.
  :func:`clip_by_global_norm` installs :class:`GlobalGradNormClip` as the wrapper's ``clip_func``, which every
  ``OptimWrapper`` calls from ``_clip_grad`` (``AmpOptimWrapper`` after unscaling): ``FSDP.clip_grad_norm_``,
  the norm over all ranks' shards, logged as ``grad_norm``.
"""
from typing import Iterable, Union

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper, OptimWrapperDict
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP


class GlobalGradNormClip:
    """``torch.nn.utils.clip_grad_norm_``'s signature, computed by ``FSDP.clip_grad_norm_`` on the root FSDP
    module: the norm of all gradients over all ranks (a collective: every rank calls it, as every rank steps).
    ``parameters`` is not read: :func:`clip_by_global_norm` checked that the optimizer holds every trainable
    parameter of the model, which is what FSDP clips."""

    def __init__(self, model: FSDP):
        self.model = model

    def __call__(self, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                 error_if_nonfinite: bool = False, foreach=None) -> torch.Tensor:
        total_norm = self.model.clip_grad_norm_(max_norm, norm_type)
        if error_if_nonfinite and not torch.isfinite(total_norm):
            raise RuntimeError(f'The total norm of order {norm_type} of the gradients is non-finite '
                               f'({float(total_norm)}), so it cannot be clipped (clip_grad.error_if_nonfinite=True)')
        return total_norm


def wrappers_of(optim_wrapper: Union[OptimWrapper, OptimWrapperDict]) -> list:
    if isinstance(optim_wrapper, OptimWrapperDict):
        return list(optim_wrapper.optim_wrappers.values())
    return [optim_wrapper]


def optimizer_params(optim_wrapper: OptimWrapper) -> list:
    return [p for group in optim_wrapper.optimizer.param_groups for p in group['params']]


def clip_by_global_norm(optim_wrapper: Union[OptimWrapper, OptimWrapperDict], model: FSDP) -> None:
    """Make every wrapper with ``clip_grad=dict(max_norm=...)`` clip by (and log) the global gradient norm.
    Value clipping (``type='value'``) acts on each element and needs nothing: on shards it is DDP's."""
    for wrapper in wrappers_of(optim_wrapper):
        if not getattr(wrapper, 'clip_grad_kwargs', None) or getattr(wrapper, 'grad_name', None) != 'grad_norm':
            continue
        held = set(map(id, optimizer_params(wrapper)))
        missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]
        if missing:
            raise ValueError(
                'clip_grad=dict(max_norm=...) under DaViTFSDPStrategy clips by the norm of all gradients of the '
                f'model (FSDP.clip_grad_norm_), but this optimizer does not hold {len(missing)} trainable '
                f'parameters (e.g. {clean_name(missing[0])}): with several optimizers (OptimWrapperDict), clip '
                'by value (clip_grad=dict(type="value", clip_value=...)) or train with DDP')
        wrapper.clip_func = GlobalGradNormClip(model)


def check_optimizer_params(optim_wrapper: Union[OptimWrapper, OptimWrapperDict], model: nn.Module) -> None:
    """The optimizer built before sharding holds the sharded model's parameters (FSDP with
    ``use_orig_params=True`` keeps the parameter objects and swaps their data for this rank's shard)."""
    own = set(map(id, model.parameters()))
    for wrapper in wrappers_of(optim_wrapper):
        if not all(id(p) in own for p in optimizer_params(wrapper)):
            raise RuntimeError('The optimizer built on the unsharded model does not hold the sharded model\'s '
                               'parameters: FSDP replaced the parameter objects (is use_orig_params=True?)')


def clean_name(name: str) -> str:
    """A parameter's name in the unsharded model (FSDP and activation-checkpoint wrappers insert prefixes)."""
    return name.replace('_fsdp_wrapped_module.', '').replace('_checkpoint_wrapped_module.', '')
