"""Sharded training (FSDP) of large DaViT models through mmengine's ``FlexibleRunner``, on GPUs and CPU ranks.

A config selects it with::

    runner_type = 'mmdavit.DaViTFlexibleRunner'
    strategy = dict(type='mmdavit.DaViTFSDPStrategy')

* :class:`DaViTFSDPStrategy` is mmengine 0.10's ``FSDPStrategy`` with what it lacks on our stack: resume
  (mmengine calls ``FSDP.optim_state_dict_to_load`` with torch < 2.1's argument order), checkpoints read
  through mmdavit's ``weights_only`` allow-list with clear errors, CPU ranks on gloo (mmengine would call
  ``torch.cuda.set_device`` and give FSDP a CUDA ``device_id``), ``--amp`` on the CPU (bfloat16, through
  :class:`~mmdavit.engine.CPUAmpOptimWrapper`), one FSDP unit per DaViT layer, and full state dicts: a
  checkpoint is one ordinary file that loads into the unsharded model (``tools/test.py``, ``tools/infer.py``,
  ``load_from``) and into another number of ranks.
* :class:`DaViTFlexibleRunner` is ``FlexibleRunner`` with :class:`~mmdavit.engine.DaViTRunner`'s guarantees:
  atomic checkpoints, exact mid-epoch resume, clear dataset and checkpoint errors.

Activation checkpointing: use the backbone's ``with_cp=True``, not the strategy's
``activation_checkpointing``. It recomputes each spatial and each channel block (non-reentrant
``torch.utils.checkpoint``, which runs inside an FSDP unit), is the same switch as for single-GPU training,
and leaves parameter names alone; mmengine's option wraps modules in ``CheckpointWrapper`` after sharding,
which renames parameters (``._checkpoint_wrapped_module.``) for the optimizer constructor.
"""
import copy
import os.path as osp
import re
from contextlib import nullcontext
from datetime import timedelta
from typing import Callable, Optional, Union

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine._strategy import FSDPStrategy
from mmengine._strategy.base import BaseStrategy
from mmengine.device import get_device
from mmengine.dist import all_gather_object, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.runner import FlexibleRunner
from mmengine.runner.loops import BaseLoop
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from mmdavit.models.layers import DaViTLayer
from mmdavit.registry import RUNNERS, STRATEGIES
from .checkpointing import (LOAD_FROM, RESUME, check_resumable, check_same_model, is_local, partial_path,
                            read_checkpoint_file, replacing)
from .cpu_amp import AMP_TYPES, CPUAmpOptimWrapper
from .loops import RNG_META_KEY, ResumableLoopMixin, capture_rng_state, resumable_loop
from .runner import DaViTRunner

RANK_RNG_META_KEY = 'rng_state_per_rank'  # in checkpoint['meta'], beside loops.RNG_META_KEY (rank 0's)
OPTIMIZER_KEYS = ('state', 'param_groups')  # an optimizer's own state dict; anything else is the wrapper's


@STRATEGIES.register_module()
class DaViTFSDPStrategy(FSDPStrategy):
    """mmengine's ``FSDPStrategy`` for DaViT models, on GPUs (NCCL) and CPU ranks (gloo).

    Differences from mmengine's:

    * ``model_wrapper.auto_wrap_policy`` defaults to one FSDP unit per ``DaViTLayer`` (its parameters are
      gathered just before the layer runs and freed after); the neck and heads form the root unit.
    * ``state_dict_cfg='full'`` (the only one accepted): rank 0 writes one file with the unsharded state
      dicts of model and optimizer, which any number of ranks resumes from and a plain model loads.
    * Without CUDA: a gloo process group and ``device_id=cpu``; ``AmpOptimWrapper`` becomes
      :class:`~mmdavit.engine.CPUAmpOptimWrapper` (bfloat16 backbone + neck, float32 heads).
    * A single process (``--launcher none``, e.g. ``tools/test.py`` with an ``*_fsdp.py`` config) runs the
      unwrapped model: there is nothing to shard over.

    Args:
        model_wrapper (dict, optional): ``MMFullyShardedDataParallel`` arguments (``sharding_strategy``,
            ``cpu_offload``, ``mixed_precision``, ``auto_wrap_policy``, ...).
        state_dict_cfg (str): ``'full'``.
        **kwargs: the other ``FSDPStrategy`` arguments (``skip_init_weights``, ``activation_checkpointing``).
    """

    def __init__(self, *, model_wrapper: Optional[dict] = None, state_dict_cfg: Union[str, dict] = 'full',
                 **kwargs):
        if state_dict_cfg != 'full':
            raise ValueError(f'DaViTFSDPStrategy saves full state dicts only, got state_dict_cfg={state_dict_cfg!r}; '
                             'set state_dict_cfg="full" (or leave it out). Sharded ("local") checkpoints are one '
                             'file per rank that only the same number of ranks can resume from, and that '
                             'tools/test.py, tools/infer.py and load_from cannot read')
        model_wrapper = dict(type='MMFullyShardedDataParallel', **(model_wrapper or {}))
        super().__init__(model_wrapper=model_wrapper, state_dict_cfg=state_dict_cfg, **kwargs)

    @property
    def sharded(self) -> bool:
        return isinstance(getattr(self, 'model', None), FSDP)

    def _setup_distributed(self, launcher: str = 'pytorch', backend: str = 'nccl', **kwargs) -> None:
        if torch.cuda.is_available():
            return super()._setup_distributed(launcher, backend, **kwargs)
        if launcher != 'pytorch':
            raise RuntimeError(f'--launcher {launcher} needs CUDA GPUs (mmengine assigns each process a GPU) and '
                               'none is available: on CPU, launch with tools/dist_train.sh or torchrun '
                               '(--launcher pytorch), which train over gloo')
        timeout = kwargs.get('timeout')
        # init_method env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, as torchrun sets them.
        torch_dist.init_process_group('gloo', timeout=timedelta(seconds=timeout) if timeout else None)

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        if not self.distributed:
            self.logger.info('DaViTFSDPStrategy in a single process: the model runs unsharded')
            return model.to(get_device())
        self.model_wrapper.setdefault('auto_wrap_policy', ModuleWrapPolicy({DaViTLayer}))
        if not torch.cuda.is_available():
            self.model_wrapper.setdefault('device_id', torch.device('cpu'))  # mmengine passes the CUDA index
            # FSDP gathers each optimizer state (exp_avg, exp_avg_sq, ...) into one reused buffer and, with
            # offload_to_cpu, keeps views of it (its "copy to the CPU" is a no-op on CPU ranks): every state
            # would come out as the last one gathered (torch 2.14). Without offloading, FSDP clones them.
            self.optim_state_dict_config.offload_to_cpu = False
        return super()._wrap_model(model)

    def build_optim_wrapper(self, optim_wrapper, model: Optional[nn.Module] = None):
        if isinstance(optim_wrapper, dict) and isinstance(model, FSDP):
            check_names_under_fsdp(optim_wrapper, model)
        if isinstance(optim_wrapper, dict) and optim_wrapper.get('type') in AMP_TYPES:
            if not torch.cuda.is_available():
                self.logger.info('AmpOptimWrapper without a GPU: mixed precision in bfloat16 autocast on the CPU')
                optim_wrapper = dict(optim_wrapper, type=CPUAmpOptimWrapper)
            elif not self.sharded:
                optim_wrapper = dict(optim_wrapper, use_fsdp=False)  # mmengine defaults to FSDP's grad scaler
        return super().build_optim_wrapper(optim_wrapper, model)

    # --- checkpoints: full state dicts, gathered by all ranks, written by rank 0 -------------------------

    def model_state_dict(self) -> dict:
        if self.sharded:
            return self.model.state_dict()  # FULL_STATE_DICT: unsharded, on the CPU, on rank 0
        return BaseStrategy.model_state_dict(self)

    def optim_state_dict(self) -> dict:
        wrapper_state = self.optim_wrapper.state_dict()
        if not self.sharded:
            return wrapper_state
        # Parameter names instead of flat-parameter shards; the wrapper's own entries (AMP loss scaler) kept.
        state = FSDP.optim_state_dict(self.model, self.optim_wrapper.optimizer)
        state.update({k: v for k, v in wrapper_state.items() if k not in OPTIMIZER_KEYS})
        return state

    def load_optim_state_dict(self, state_dict: dict) -> None:
        if self.sharded:
            wrapper_entries = {k: v for k, v in state_dict.items() if k not in OPTIMIZER_KEYS}
            optimizer_state = {k: v for k, v in state_dict.items() if k in OPTIMIZER_KEYS}
            # torch >= 2.1's argument order (mmengine 0.10 passes the state dict first).
            state_dict = dict(FSDP.optim_state_dict_to_load(self.model, self.optim_wrapper.optimizer,
                                                            optimizer_state), **wrapper_entries)
        self.optim_wrapper.load_state_dict(state_dict)

    def build_model(self, model: Union[nn.Module, dict]) -> nn.Module:
        built = super().build_model(model)
        # A weightless twin of the unsharded model for the checkpoint checks: once sharded, the model can list
        # its parameters' names and shapes only by gathering them.
        self.unsharded_twin = None
        if isinstance(model, dict):
            with torch.device('meta'):
                self.unsharded_twin = super().build_model(copy.deepcopy(model))
        return built

    _loading_for = LOAD_FROM  # what load_checkpoint serves, for errors that fit: load_from unless resuming

    def resume(self, filename: str, **kwargs) -> dict:
        self._loading_for = RESUME
        try:
            return super().resume(filename, **kwargs)
        finally:
            self._loading_for = LOAD_FROM

    def load_checkpoint(self, filename: str, *, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')], callback: Optional[Callable] = None) -> dict:
        """Read ``filename`` through mmdavit's ``weights_only`` allow-list with errors naming the file and the
        cause, check that it is a checkpoint of this model (``load_from``: shares its backbone; resume: the
        very same parameters), and load the model weights on every rank."""
        self.logger.info(f'Load checkpoint from {filename}')
        checkpoint = read_checkpoint_file(filename, 'cpu' if map_location == 'default' else map_location,
                                          self._loading_for, self.work_dir)
        if callback is not None:
            callback(checkpoint)
        model = self.unsharded_twin or (self.model.module if is_model_wrapper(self.model) else self.model)
        if self._loading_for == LOAD_FROM:
            check_same_model(model, checkpoint, filename, revise_keys)
        else:
            check_resumable(model, checkpoint, filename, revise_keys)
        state_dict = checkpoint.pop('state_dict')
        self.load_model_state_dict(state_dict, strict=strict, revise_keys=revise_keys)
        return checkpoint

    def load_model_state_dict(self, state_dict: dict, *, strict: bool = False,
                              revise_keys: list = [(r'^module.', '')]) -> None:
        if not self.sharded:
            return BaseStrategy.load_model_state_dict(self, state_dict, strict=strict, revise_keys=revise_keys)
        for pattern, replacement in revise_keys:
            state_dict = {re.sub(pattern, replacement, k): v for k, v in state_dict.items()}
        incompatible = self.model.load_state_dict(state_dict, strict=strict)
        if incompatible.missing_keys or incompatible.unexpected_keys:
            self.logger.warning(f'Checkpoint and model differ: missing keys {incompatible.missing_keys}, '
                                f'unexpected keys {incompatible.unexpected_keys}')


def check_names_under_fsdp(optim_wrapper: dict, model: nn.Module) -> None:
    """The optimizer constructor sees the sharded model's parameter names, with ``_fsdp_wrapped_module.``
    before each DaViT layer's: refuse what would then silently select other parameters."""
    if 'LayerDecay' in str(optim_wrapper.get('constructor', '')):
        raise ValueError('Layer-wise LR decay (DaViTLayerDecayOptimWrapperConstructor) is not supported with '
                         'DaViTFSDPStrategy yet: it reads layer ids from parameter names, which FSDP changes. '
                         'Train with DaViTRunner (DDP), or drop the constructor')
    names = [name for name, _ in model.named_parameters()]
    for key in (optim_wrapper.get('paramwise_cfg') or {}).get('custom_keys', {}):
        moved = [n for n in names if (key in n) != (key in n.replace('_fsdp_wrapped_module.', ''))]
        if moved:
            raise ValueError(f'paramwise_cfg.custom_keys[{key!r}] names parameters inside DaViT layers (e.g. '
                             f'{moved[0].replace("_fsdp_wrapped_module.", "")}), which under FSDP are called '
                             f'{moved[0]}: the key would not match them. Use a key that does not span the '
                             'layer boundary (e.g. "spatial.norm1" instead of "blocks.0.spatial.norm1")')


@RUNNERS.register_module()
class DaViTFlexibleRunner(FlexibleRunner):
    """mmengine's ``FlexibleRunner`` (strategies: FSDP, DeepSpeed, ...) with ``DaViTRunner``'s guarantees:
    checkpoints written atomically (for strategies that write one file from rank 0: DDP, FSDP with full
    state dicts; ``last_checkpoint`` through ``AtomicCheckpointHook``), mid-epoch resume at the same iteration
    and data order, clear errors for missing datasets (and, with :class:`DaViTFSDPStrategy`, for bad
    checkpoints). Checkpoints also carry every rank's random states, which a resume on the same number of
    ranks restores (``DaViTRunner`` restores them in single-process runs only)."""

    build_dataloader = staticmethod(DaViTRunner.build_dataloader)
    loaded_checkpoint_meta: Optional[dict] = None

    def build_train_loop(self, loop: Union[BaseLoop, dict]) -> BaseLoop:
        return super().build_train_loop(resumable_loop(loop) if isinstance(loop, dict) else loop)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        if fn_name == 'after_load_checkpoint':  # FlexibleRunner.resume does not return the checkpoint
            self.loaded_checkpoint_meta = kwargs['checkpoint'].get('meta', {})
        super().call_hook(fn_name, **kwargs)

    def save_checkpoint(self, out_dir: str, filename: str, file_client_args: Optional[dict] = None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True, meta: Optional[dict] = None,
                        by_epoch: bool = True, backend_args: Optional[dict] = None):
        """``FlexibleRunner.save_checkpoint`` plus the random states; every rank takes part (FSDP gathers
        the shards), rank 0 writes a partial file and renames it into place (local folders)."""
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f'meta should be a dict or None, but got {type(meta)}')
        meta = dict(meta or {})
        meta[RNG_META_KEY] = getattr(self._train_loop, 'rng_state_outside_val', None) or capture_rng_state()
        if self.world_size > 1:  # every rank's generators, so that a resumed distributed run draws the same
            meta[RANK_RNG_META_KEY] = all_gather_object(meta[RNG_META_KEY])
        args = dict(file_client_args=file_client_args, save_optimizer=save_optimizer,
                    save_param_scheduler=save_param_scheduler, meta=meta, by_epoch=by_epoch,
                    backend_args=backend_args)
        if file_client_args is not None or backend_args is not None or not is_local(out_dir):
            return super().save_checkpoint(out_dir, filename, **args)
        path = osp.join(out_dir, filename)
        with replacing(path) if is_main_process() else nullcontext(partial_path(path)) as temporary:
            super().save_checkpoint(out_dir, osp.basename(temporary), **args)

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        loop = self.train_loop
        if not isinstance(loop, ResumableLoopMixin):
            return
        meta = self.loaded_checkpoint_meta or {}
        rank_states = meta.get(RANK_RNG_META_KEY)
        if rank_states is not None and len(rank_states) == self.world_size:
            loop.prepare_resume(None)  # position in the epoch
            loop.pending_rng_state = rank_states[self.rank]  # restored where the loop restores a saved state
            self.logger.info(f'Resume: random states of all {self.world_size} ranks restored')
        else:  # another number of ranks, or a single-process checkpoint
            loop.prepare_resume(meta.get(RNG_META_KEY))
