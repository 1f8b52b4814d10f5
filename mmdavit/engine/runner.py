"""mmengine's Runner, hardened for long jobs on shared clusters.

Selected in our configs by ``runner_type = 'mmdavit.DaViTRunner'``, which mmdet's and mmseg's train/test
scripts (and therefore ``tools/train.py``, ``mim train``/``mim test``) honour. On top of mmengine 0.10's
Runner it adds:

* **Atomic checkpoints** (``checkpointing.py``): each checkpoint file is written to a partial file and renamed
  into place; with ``default_hooks.checkpoint=dict(type='mmdavit.AtomicCheckpointHook')`` (our configs) a job
  killed at any moment also leaves ``last_checkpoint`` and the previous checkpoint valid.
* **Exact resume** (``loops.py``): same iteration, data order and (single-process) random states as the
  uninterrupted run. (Dataloader workers are seeded by mmengine when they start: with
  ``persistent_workers=True`` a run resumed after its first epoch draws other augmentations than the
  uninterrupted run did; the data order is still the same.)
* **Checkpoints that cannot be read, or belong to another model**, fail with an error naming the file and
  the cause, instead of a pickle/zip traceback or a silently unloaded model: ``load_from`` must give the
  backbone at least half of its weights (names and shapes), unless the config sets
  ``load_from_skip_backbone=True`` to load only neck and heads; resume needs this very model's parameters.
  A resume whose config changed the optimizer's hyper-parameters warns that the checkpoint's win.
* **Mixed precision on CPU** (``cpu_amp.py``): ``--amp`` without a GPU runs backbone + neck in bfloat16
  autocast and the heads in float32. With a GPU nothing changes.
* **Missing datasets** say how to prepare the data.
"""
from functools import partial
from typing import Callable, Dict, Optional, Union

import torch
from mmengine.device import get_device
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper, revert_sync_batchnorm
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from mmengine.runner.loops import BaseLoop
from torch import nn
from torch.utils.data import DataLoader

from mmdavit.compat import torch_at_least
from mmdavit.registry import RUNNERS
from .checkpointing import (AUTO_RESUME, LOAD_FROM, PARAM_NAMES_META_KEY, RESUME, SKIP_BACKBONE_KEY,
                            checked_for_loading, is_local, numbered_param_names, optimizer_overrides,
                            optimizer_state_for, read_checkpoint_file, save_atomically, scheduler_overrides)
from .cpu_amp import AMP_TYPES, CPUAmpOptimWrapper
from .loops import RNG_META_KEY, SHAPE_META_KEY, ResumableLoopMixin, capture_rng_state, resumable_loop

DATASET_HINTS = {
    'CocoDataset': ('COCO: download train2017.zip, val2017.zip and annotations_trainval2017.zip from '
                    'cocodataset.org and unpack them so that data/coco/{train2017,val2017,annotations} exist '
                    '(README, "Reproducing COCO and ADE20K"); or set train_dataloader.dataset.data_root (and the '
                    'val/test ones and val_evaluator.ann_file) to where your copy lives.'),
    'ADE20KDataset': ('ADE20K: download ADEChallengeData2016.zip (MIT Scene Parsing benchmark) and unzip it into '
                      'data/ade/ so that data/ade/ADEChallengeData2016/{images,annotations} exist (README, '
                      '"Reproducing COCO and ADE20K"); or set the dataloaders\' dataset.data_root to your copy.'),
}
SYNTHETIC_HINT = 'To see everything work without downloads, run `make demo` (synthetic COCO/ADE-format data).'


def dataset_hint(dataloader_cfg: Dict) -> str:
    dataset_type = str(dataloader_cfg.get('dataset', {}).get('type', '')).split('.')[-1]
    how_to = DATASET_HINTS.get(dataset_type, f'Check the dataset paths of your {dataset_type or "dataset"} config.')
    return f'{how_to} {SYNTHETIC_HINT}'


def warn_resume_overrides(logger, optim_wrapper, param_schedulers, checkpoint: dict, filename: str) -> None:
    """mmengine resumes the optimizer state and the parameter schedulers' states from the checkpoint: say which
    config values (e.g. ``--cfg-options optim_wrapper.optimizer.lr=...``, a longer warmup) that leaves unused."""
    fix = ('To train with the config\'s values, start a new run from these weights with load_from=PATH and '
           'resume=False')
    if isinstance(optim_wrapper, OptimWrapper) and isinstance(checkpoint.get('optimizer'), dict):
        overrides = optimizer_overrides(optim_wrapper.state_dict(), checkpoint['optimizer'])
        if overrides:
            changes = ', '.join(f'{name} {config!r} (config) -> {saved!r} (checkpoint)'
                                for name, config, saved in overrides)
            logger.warning(f'Resume: the optimizer state in {filename} replaces the config\'s settings: {changes}; '
                           f'training continues with the checkpoint\'s. {fix}')
    saved = checkpoint.get('param_schedulers')
    if isinstance(param_schedulers, list) and isinstance(saved, list):
        changes = [f'{scheduler} {name} {config!r} (config) -> {value!r} (checkpoint)'
                   for scheduler, name, config, value in scheduler_overrides(param_schedulers, saved)]
        if len(saved) != len(param_schedulers):
            changes.append(f'{len(param_schedulers)} schedulers (config) -> {len(saved)} (checkpoint), paired in '
                           'order (mmengine), the rest left as configured')
        if changes:
            logger.warning(f'Resume: the parameter-scheduler states in {filename} replace the config\'s '
                           f'param_scheduler: {"; ".join(changes)}; training continues with the checkpoint\'s '
                           f'schedule. {fix}')


def resume_meta(loop, model: nn.Module, optim_wrapper) -> dict:
    """What a resume needs beyond mmengine's checkpoint, for ``checkpoint['meta']``: the random states
    (``RNG_META_KEY``), batch size and number of processes (``SHAPE_META_KEY``) and, for a torch optimizer
    (its state is keyed by position), each position's parameter name (``PARAM_NAMES_META_KEY``), so that FSDP
    can resume it. ``optim_wrapper``: None for FSDP's, which is keyed by name."""
    meta = {RNG_META_KEY: getattr(loop, 'rng_state_outside_val', None) or capture_rng_state()}
    if isinstance(loop, ResumableLoopMixin):
        meta[SHAPE_META_KEY] = loop.shape()
    if isinstance(optim_wrapper, OptimWrapper):
        model = model.module if is_model_wrapper(model) else model
        meta[PARAM_NAMES_META_KEY] = numbered_param_names(model, optim_wrapper.optimizer)
    return meta


def without_cpu_fused_step(optim_wrapper: dict, logger) -> dict:
    """``optimizer=dict(fused=True)`` (our CPU configs: one kernel for the whole AdamW step) runs on the CPU from
    torch 2.4; older torch refuses it. Take the for-each step there, which computes the same update."""
    optimizer = optim_wrapper.get('optimizer') or {}
    if not optimizer.get('fused') or torch_at_least('2.4'):
        return optim_wrapper
    logger.warning(f'optimizer fused=True: a fused step on the CPU needs torch >= 2.4 (this is {torch.__version__}); '
                   'using the for-each implementation (the same update, slower)')
    return dict(optim_wrapper, optimizer=dict(optimizer, fused=False))


@RUNNERS.register_module()
class DaViTRunner(Runner):

    @staticmethod
    def build_dataloader(dataloader: Union[DataLoader, Dict], seed: Optional[int] = None,
                         diff_rank_seed: bool = False) -> DataLoader:
        try:
            return Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        except FileNotFoundError as error:
            if isinstance(dataloader, DataLoader):
                raise
            raise FileNotFoundError(f'Dataset not found: {error}. {dataset_hint(dataloader)}') from error

    def build_train_loop(self, loop: Union[BaseLoop, Dict]) -> BaseLoop:
        """mmengine's epoch- and iteration-based loops become their resumable versions; custom loops stay."""
        return super().build_train_loop(resumable_loop(loop) if isinstance(loop, dict) else loop)

    def build_optim_wrapper(self, optim_wrapper):
        if isinstance(optim_wrapper, dict) and get_device() == 'cpu':
            if optim_wrapper.get('type') in AMP_TYPES:
                self.logger.info('AmpOptimWrapper without a GPU: mixed precision in bfloat16 autocast on the CPU')
                optim_wrapper = dict(optim_wrapper, type=CPUAmpOptimWrapper)
            optim_wrapper = without_cpu_fused_step(optim_wrapper, self.logger)
        return super().build_optim_wrapper(optim_wrapper)

    def wrap_model(self, model_wrapper_cfg: Optional[Dict], model: nn.Module) -> nn.Module:
        """mmengine turns SyncBN into BN when training is not distributed; do so too when it is but runs on the
        CPU (gloo), where torch's SyncBatchNorm refuses to run (e.g. the paper UperNet configs there)."""
        if self.distributed and get_device() == 'cpu' and not is_model_wrapper(model) and any(
                isinstance(module, nn.SyncBatchNorm) for module in model.modules()):
            self.logger.warning('SyncBatchNorm needs GPUs: on the CPU each process normalises its own batch '
                                '(SyncBN layers become BatchNorm)')
            model = revert_sync_batchnorm(model)
        return super().wrap_model(model_wrapper_cfg, model)

    def register_hook(self, hook: Union[Hook, Dict], priority=None) -> None:
        super().register_hook(hook, priority)
        if not self._warned_checkpoint_hook and any(type(h) is CheckpointHook for h in self._hooks):
            self._warned_checkpoint_hook = True
            self.logger.warning(
                "default_hooks.checkpoint is mmengine's CheckpointHook: DaViTRunner still writes each checkpoint "
                'file atomically, but this hook deletes the oldest checkpoint (max_keep_ckpts) before writing the '
                'new one and writes last_checkpoint in place, so a job killed then can leave no valid checkpoint '
                "to resume. Set default_hooks.checkpoint.type='mmdavit.AtomicCheckpointHook' (same arguments) "
                'for the crash-safe order')

    _warned_checkpoint_hook = False

    def save_checkpoint(self, out_dir: str, filename: str, file_client_args: Optional[dict] = None,
                        save_optimizer: bool = True, save_param_scheduler: bool = True, meta: Optional[dict] = None,
                        by_epoch: bool = True, backend_args: Optional[dict] = None):
        """mmengine's ``save_checkpoint`` plus what a resume needs (:func:`resume_meta`), written to a partial
        file and renamed into place (for local folders; other storage backends are written as mmengine does)."""
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f'meta should be a dict or None, but got {type(meta)}')
        if not is_main_process():
            return
        meta = dict(meta or {}, **resume_meta(self._train_loop, self.model, getattr(self, 'optim_wrapper', None)))
        args = dict(file_client_args=file_client_args, save_optimizer=save_optimizer,
                    save_param_scheduler=save_param_scheduler, meta=meta, by_epoch=by_epoch,
                    backend_args=backend_args)
        local = file_client_args is None and backend_args is None and is_local(out_dir)
        save_atomically(partial(super().save_checkpoint, **args), out_dir, filename, local)

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):
        """mmengine's ``load_checkpoint`` (used by ``load_from`` and resume) with errors that fit what the user
        did for missing, unreadable and foreign checkpoints, and ``load_from_skip_backbone``.

        The body is mmengine 0.10.7's ``Runner.load_checkpoint`` with the checks added
        (``tests/engine/test_upstream_copies.py`` fails when the installed mmengine's version changes)."""
        origin = self._loading_for
        checkpoint = read_checkpoint_file(filename, map_location, origin, self.work_dir)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint = checked_for_loading(model, checkpoint, filename, revise_keys, origin,
                                         bool(self.cfg.get(SKIP_BACKBONE_KEY, False)), self.logger)
        if origin != LOAD_FROM:
            if isinstance(self.optim_wrapper, OptimWrapper) and isinstance(checkpoint.get('optimizer'), dict):
                # an FSDP checkpoint keys it by parameter name
                checkpoint['optimizer'] = optimizer_state_for(self.optim_wrapper.optimizer, model,
                                                              checkpoint['optimizer'], filename)
            warn_resume_overrides(self.logger, self.optim_wrapper, self.param_schedulers, checkpoint, filename)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._loaded_checkpoint_meta = checkpoint.get('meta', {})
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    # How load_checkpoint is being used: by load_from unless resume() says otherwise.
    _loading_for = LOAD_FROM

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        """mmengine's ``resume``, after checking that the checkpoint is of this model (before torch meets a
        param group of another size), plus the loop's exact-resume state."""
        # mmengine's load_or_resume: resume=True without load_from reads the path from last_checkpoint
        self._loading_for = AUTO_RESUME if self._resume and self._load_from is None else RESUME
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        finally:
            self._loading_for = LOAD_FROM
        loop = self.train_loop
        if isinstance(loop, ResumableLoopMixin):
            meta = getattr(self, '_loaded_checkpoint_meta', {})
            loop.prepare_resume(meta.get(RNG_META_KEY), meta.get(SHAPE_META_KEY))
