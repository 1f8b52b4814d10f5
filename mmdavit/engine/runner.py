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
import os.path as osp
from typing import Callable, Dict, Optional, Union

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

from mmdavit.registry import RUNNERS
from .checkpointing import (AUTO_RESUME, LOAD_FROM, RESUME, SKIP_BACKBONE_KEY, check_resumable, check_same_model,
                            is_local, optimizer_overrides, read_checkpoint_file, replacing, without_backbone)
from .cpu_amp import AMP_TYPES, CPUAmpOptimWrapper
from .loops import RNG_META_KEY, ResumableLoopMixin, capture_rng_state, resumable_loop

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
        if isinstance(optim_wrapper, dict) and optim_wrapper.get('type') in AMP_TYPES and get_device() == 'cpu':
            self.logger.info('AmpOptimWrapper without a GPU: mixed precision in bfloat16 autocast on the CPU')
            optim_wrapper = dict(optim_wrapper, type=CPUAmpOptimWrapper)
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
        """mmengine's ``save_checkpoint``, plus the random states, written to a partial file and renamed into
        place (for local folders; other storage backends are written as mmengine does)."""
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f'meta should be a dict or None, but got {type(meta)}')
        if not is_main_process():
            return
        meta = dict(meta or {})
        loop = self._train_loop
        meta[RNG_META_KEY] = getattr(loop, 'rng_state_outside_val', None) or capture_rng_state()
        args = dict(file_client_args=file_client_args, save_optimizer=save_optimizer,
                    save_param_scheduler=save_param_scheduler, meta=meta, by_epoch=by_epoch,
                    backend_args=backend_args)
        if file_client_args is not None or backend_args is not None or not is_local(out_dir):
            return super().save_checkpoint(out_dir, filename, **args)
        with replacing(osp.join(out_dir, filename)) as temporary:
            # relative to out_dir, so that a name with folders (filename_tmpl='ckpts/epoch_{}.pth') is
            # written beside its final name (mmengine creates the folders)
            super().save_checkpoint(out_dir, osp.relpath(temporary, out_dir), **args)

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
        if origin == LOAD_FROM:
            skip_backbone = bool(self.cfg.get(SKIP_BACKBONE_KEY, False))
            check_same_model(model, checkpoint, filename, revise_keys, skip_backbone)
            if skip_backbone:
                checkpoint, skipped = without_backbone(checkpoint, revise_keys)
                self.logger.info(f'{SKIP_BACKBONE_KEY}=True: loading neck and heads from {filename}, not its '
                                 f'{skipped} backbone tensors (the backbone keeps its init_cfg weights)')
        else:
            if self.cfg.get(SKIP_BACKBONE_KEY, False):
                self.logger.warning(f'{SKIP_BACKBONE_KEY}=True applies to load_from only: resuming loads all of '
                                    f'{filename}, backbone included (it continues that run)')
            check_resumable(model, checkpoint, filename, revise_keys)
            self._warn_optimizer_overrides(checkpoint, filename)
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
            loop.prepare_resume(getattr(self, '_loaded_checkpoint_meta', {}).get(RNG_META_KEY))

    def _warn_optimizer_overrides(self, checkpoint: dict, filename: str) -> None:
        """mmengine resumes the optimizer state and schedule from the checkpoint: say which config values
        (e.g. ``--cfg-options optim_wrapper.optimizer.lr=...``) that leaves unused."""
        if not isinstance(self.optim_wrapper, OptimWrapper) or not isinstance(checkpoint.get('optimizer'), dict):
            return
        overrides = optimizer_overrides(self.optim_wrapper.state_dict(), checkpoint['optimizer'])
        if overrides:
            changes = ', '.join(f'{name} {config!r} (config) -> {saved!r} (checkpoint)'
                                for name, config, saved in overrides)
            self.logger.warning(f'Resume: the optimizer state in {filename} replaces the config\'s settings: '
                                f'{changes}; training continues with the checkpoint\'s. To train with the config\'s '
                                'values, start a new run from these weights with load_from=PATH and resume=False')
