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
import re
from datetime import timedelta
from functools import partial
from typing import Callable, Optional, Union

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine._strategy import FSDPStrategy
from mmengine._strategy.base import BaseStrategy
from mmengine.device import get_device
from mmengine.dist import all_gather_object, is_main_process
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.runner import FlexibleRunner
from mmengine.runner.loops import BaseLoop
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from mmdavit.compat import check_cpu_fsdp
from mmdavit.models.layers import DaViTLayer
from mmdavit.registry import RUNNERS, STRATEGIES
from .checkpointing import (LOAD_FROM, PARAM_NAMES_META_KEY, RESUME, SKIP_BACKBONE_KEY, checked_for_loading, is_local,
                            optimizer_state_by_name, optimizer_state_for, read_checkpoint_file, save_atomically)
from .cpu_amp import AMP_TYPES, CPUAmpOptimWrapper
from .fsdp_optim import check_optimizer_params, clip_by_global_norm
from .loops import RNG_META_KEY, SHAPE_META_KEY, ResumableLoopMixin, resumable_loop
from .runner import DaViTRunner, resume_meta, warn_resume_overrides

RANK_RNG_META_KEY = 'rng_state_per_rank'  # in checkpoint['meta'], beside loops.RNG_META_KEY (rank 0's)
OPTIMIZER_KEYS = ('state', 'param_groups')  # an optimizer's own state dict; anything else is the wrapper's


@STRATEGIES.register_module()
class DaViTFSDPStrategy(FSDPStrategy):
    """mmengine's ``FSDPStrategy`` for DaViT models, on GPUs (NCCL) and CPU ranks (gloo).

    Differences from mmengine's:

    * ``model_wrapper.auto_wrap_policy`` defaults to one FSDP unit per ``DaViTLayer`` (its parameters are
      gathered just before the layer runs and freed after); the neck and heads form the root unit.
    * The optimizer trains as under DDP: its wrapper is built on the model before sharding, so
      ``paramwise_cfg`` (``custom_keys``, ``norm_decay_mult``, ``flat_decay_mult``, ...) and the layer-wise
      LR decay constructor see the parameters' own names and shapes; ``clip_grad=dict(max_norm=...)`` clips
      by (and logs) the norm of the whole gradient, over all ranks (:mod:`mmdavit.engine.fsdp_optim`).
      Needs ``use_orig_params=True`` (the default).
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
        if not model_wrapper.get('use_orig_params', True):
            raise ValueError('DaViTFSDPStrategy needs model_wrapper.use_orig_params=True (the default): the '
                             'optimizer is built on the unsharded model, so that paramwise_cfg treats every '
                             'parameter as under DDP, and steps those parameters, whose data FSDP shards')
        super().__init__(model_wrapper=model_wrapper, state_dict_cfg=state_dict_cfg, **kwargs)

    _optim_wrapper_cfg = None  # during prepare(): the optimizer wrapper config, built in _wrap_model
    _unsharded_optim_wrapper = None  # ... and the wrapper built there, on the model before sharding

    def prepare(self, model, *, optim_wrapper=None, **kwargs):
        self._optim_wrapper_cfg = optim_wrapper
        try:
            return super().prepare(model, optim_wrapper=optim_wrapper, **kwargs)
        finally:
            self._optim_wrapper_cfg = self._unsharded_optim_wrapper = None

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
        check_cpu_fsdp()
        timeout = kwargs.get('timeout')
        # init_method env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, as torchrun sets them.
        torch_dist.init_process_group('gloo', timeout=timedelta(seconds=timeout) if timeout else None)

    def _wrap_model(self, model: nn.Module) -> nn.Module:
        # The unsharded parameters, for optimizer states keyed by position (checkpoints of DDP, one process)
        self.param_shapes = {name: param.shape for name, param in model.named_parameters()}
        if getattr(self, 'unsharded_twin', None) is None:  # a built model was given: twin it for the checks
            self.unsharded_twin = weightless_copy(model)
        if not self.distributed:
            self.logger.info('DaViTFSDPStrategy in a single process: the model runs unsharded')
            return model.to(get_device())
        self.model_wrapper.setdefault('auto_wrap_policy', ModuleWrapPolicy({DaViTLayer}))
        if isinstance(self._optim_wrapper_cfg, dict):  # DDP's parameter groups: built before sharding
            self._unsharded_optim_wrapper = self.build_optim_wrapper(copy.deepcopy(self._optim_wrapper_cfg), model)
        if not torch.cuda.is_available():
            self.model_wrapper.setdefault('device_id', torch.device('cpu'))  # mmengine passes the CUDA index
            # FSDP gathers each optimizer state (exp_avg, exp_avg_sq, ...) into one reused buffer and, with
            # offload_to_cpu, keeps views of it (its "copy to the CPU" is a no-op on CPU ranks): every state
            # would come out as the last one gathered (torch 2.14). Without offloading, FSDP clones them.
            self.optim_state_dict_config.offload_to_cpu = False
        return super()._wrap_model(model)

    def build_optim_wrapper(self, optim_wrapper, model: Optional[nn.Module] = None):
        if isinstance(model, FSDP) and self._unsharded_optim_wrapper is not None:
            built, self._unsharded_optim_wrapper = self._unsharded_optim_wrapper, None  # from _wrap_model
            check_optimizer_params(built, model)
        else:
            if isinstance(optim_wrapper, dict) and optim_wrapper.get('type') in AMP_TYPES:
                if not torch.cuda.is_available():
                    self.logger.info('AmpOptimWrapper without a GPU: mixed precision in bfloat16 autocast on the CPU')
                    optim_wrapper = dict(optim_wrapper, type=CPUAmpOptimWrapper)
                elif not self.distributed:  # a single process runs the model unsharded
                    optim_wrapper = dict(optim_wrapper, use_fsdp=False)  # mmengine defaults to FSDP's grad scaler
            built = super().build_optim_wrapper(optim_wrapper, model)
        if isinstance(model, FSDP):
            clip_by_global_norm(built, model)
        return built

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
        """Load a checkpoint's optimizer state, keyed by parameter name (FSDP's) or by position (a torch
        optimizer's: DaViTRunner, DDP, a single process), into this optimizer, sharded or not."""
        filename, meta = self._loaded_from
        if not self.sharded:
            model = self.model.module if is_model_wrapper(self.model) else self.model
            state_dict = optimizer_state_for(self.optim_wrapper.optimizer, model, state_dict, filename)
        else:
            wrapper_entries = {k: v for k, v in state_dict.items() if k not in OPTIMIZER_KEYS}
            optimizer_state = optimizer_state_by_name({k: v for k, v in state_dict.items() if k in OPTIMIZER_KEYS},
                                                      self.param_shapes, filename, meta.get(PARAM_NAMES_META_KEY))
            # torch >= 2.1's argument order (mmengine 0.10 passes the state dict first).
            state_dict = dict(FSDP.optim_state_dict_to_load(self.model, self.optim_wrapper.optimizer,
                                                            optimizer_state), **wrapper_entries)
        self.optim_wrapper.load_state_dict(state_dict)

    def build_model(self, model: Union[nn.Module, dict]) -> nn.Module:
        # Copied before the first build: builders may write into the config (mmdet's DINO sets bbox_head's
        # share_pred_layer, num_pred_layer and as_two_stage, then refuses a config that has them).
        config = copy.deepcopy(model) if isinstance(model, dict) else None
        built = super().build_model(model)
        # A weightless twin of the unsharded model for the checkpoint checks: once sharded, the model can list
        # its parameters' names and shapes only by gathering them.
        self.unsharded_twin = None
        if config is not None:
            with torch.device('meta'):
                self.unsharded_twin = BaseStrategy.build_model(self, config)
        return built

    _loading_for = LOAD_FROM  # what load_checkpoint serves, for errors that fit: load_from unless resuming
    _loaded_from = ('', {})  # the checkpoint being resumed: its file and meta
    load_from_skip_backbone = False  # load_from loads neck and heads only (DaViTFlexibleRunner sets it)

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
        self._loaded_from = (filename, checkpoint.get('meta') or {})
        if callback is not None:
            callback(checkpoint)
        model = self.unsharded_twin or (self.model.module if is_model_wrapper(self.model) else self.model)
        checkpoint = checked_for_loading(model, checkpoint, filename, revise_keys, self._loading_for,
                                         self.load_from_skip_backbone, self.logger)
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


def weightless_copy(model: nn.Module) -> nn.Module:
    """``model`` with its parameters and buffers on the meta device (names and shapes, no data, no copy of it)."""
    memo = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        meta = torch.empty_like(tensor, device='meta')
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


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
    _resuming: Optional[str] = None  # the checkpoint being resumed from

    def build_train_loop(self, loop: Union[BaseLoop, dict]) -> BaseLoop:
        return super().build_train_loop(resumable_loop(loop) if isinstance(loop, dict) else loop)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        if fn_name == 'after_load_checkpoint':  # FlexibleRunner.resume does not return the checkpoint
            checkpoint = kwargs['checkpoint']
            self.loaded_checkpoint_meta = checkpoint.get('meta', {})
            if self._resuming is not None:
                self._prepare_resumed_state(checkpoint, self._resuming)
        super().call_hook(fn_name, **kwargs)

    def _prepare_resumed_state(self, checkpoint: dict, filename: str) -> None:
        """An optimizer state of another kind for mmengine's strategies (DaViTFSDPStrategy converts its own),
        and the warnings about config values the checkpoint's states replace."""
        strategy = self.strategy
        optim_wrapper = getattr(strategy, 'optim_wrapper', None)
        if (not isinstance(strategy, DaViTFSDPStrategy) and isinstance(optim_wrapper, OptimWrapper)
                and isinstance(checkpoint.get('optimizer'), dict)):
            model = strategy.model.module if is_model_wrapper(strategy.model) else strategy.model
            checkpoint['optimizer'] = optimizer_state_for(optim_wrapper.optimizer, model, checkpoint['optimizer'],
                                                          filename)
        warn_resume_overrides(self.logger, optim_wrapper, getattr(strategy, 'param_schedulers', None), checkpoint,
                              filename)

    def _pass_skip_backbone(self) -> None:
        skip = bool(self.cfg.get(SKIP_BACKBONE_KEY, False))
        if isinstance(self.strategy, DaViTFSDPStrategy):
            self.strategy.load_from_skip_backbone = skip
        elif skip:
            raise ValueError(f'{SKIP_BACKBONE_KEY}=True works with DaViTRunner and with DaViTFlexibleRunner\'s '
                             f'DaViTFSDPStrategy, not with {type(self.strategy).__name__}, which would load the whole '
                             f'checkpoint: use one of them, or remove {SKIP_BACKBONE_KEY}')

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):
        self._pass_skip_backbone()
        return super().load_checkpoint(filename, map_location, strict, revise_keys)

    def save_checkpoint(self, out_dir: str, filename: str, file_client_args: Optional[dict] = None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True, meta: Optional[dict] = None,
                        by_epoch: bool = True, backend_args: Optional[dict] = None):
        """``FlexibleRunner.save_checkpoint`` plus what a resume needs (``resume_meta``, and every rank's random
        states); every rank takes part (FSDP gathers the shards), rank 0 writes a partial file and renames it
        into place (local folders)."""
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f'meta should be a dict or None, but got {type(meta)}')
        strategy = self.strategy
        sharded = isinstance(strategy, DaViTFSDPStrategy) and strategy.sharded  # its optimizer state: by name
        meta = dict(meta or {}, **resume_meta(self._train_loop, strategy.model,
                                              None if sharded else getattr(strategy, 'optim_wrapper', None)))
        if self.world_size > 1:  # every rank's generators, so that a resumed distributed run draws the same
            meta[RANK_RNG_META_KEY] = all_gather_object(meta[RNG_META_KEY])
        args = dict(file_client_args=file_client_args, save_optimizer=save_optimizer,
                    save_param_scheduler=save_param_scheduler, meta=meta, by_epoch=by_epoch,
                    backend_args=backend_args)
        local = file_client_args is None and backend_args is None and is_local(out_dir)
        save_atomically(partial(super().save_checkpoint, **args), out_dir, filename, local, is_main_process())

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        self._pass_skip_backbone()
        self._resuming = filename
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        finally:
            self._resuming = None
        loop = self.train_loop
        if not isinstance(loop, ResumableLoopMixin):
            return
        meta = self.loaded_checkpoint_meta or {}
        rank_states = meta.get(RANK_RNG_META_KEY)
        if rank_states is not None and len(rank_states) == self.world_size:
            loop.prepare_resume(None, meta.get(SHAPE_META_KEY))  # position in the epoch
            loop.pending_rng_state = rank_states[self.rank]  # restored where the loop restores a saved state
            self.logger.info(f'Resume: random states of all {self.world_size} ranks restored')
        else:  # another number of ranks, or a single-process checkpoint
            loop.prepare_resume(meta.get(RNG_META_KEY), meta.get(SHAPE_META_KEY))
