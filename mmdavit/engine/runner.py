"""mmengine's Runner, hardened for long jobs on shared clusters.

Selected in our configs by ``runner_type = 'mmdavit.DaViTRunner'``, which mmdet's and mmseg's train/test
scripts (and therefore ``tools/train.py``, ``mim train``/``mim test``) honour. On top of mmengine 0.10's
Runner it adds:

* **Atomic checkpoints** (``checkpointing.py``): a job killed at any moment leaves the previous checkpoint and
  ``last_checkpoint`` valid.
* **Exact resume** (``loops.py``): same iteration, data order and (single-process) random states as the
  uninterrupted run. (Dataloader workers are seeded by mmengine when they start: with
  ``persistent_workers=True`` a run resumed after its first epoch draws other augmentations than the
  uninterrupted run did; the data order is still the same.)
* **Checkpoints that cannot be read, or belong to another model**, fail with an error naming the file and
  the cause, instead of a pickle/zip traceback or a silently unloaded model.
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
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from mmengine.runner.loops import BaseLoop
from torch import nn
from torch.utils.data import DataLoader

from mmdavit.registry import RUNNERS
from .checkpointing import AtomicCheckpointHook, check_same_model, is_local, read_checkpoint_file, replacing
from .cpu_amp import AMP_TYPES, CPUAmpOptimWrapper
from .loops import RESUMABLE_LOOPS, LOOP_NAMES, RNG_META_KEY, ResumableLoopMixin, capture_rng_state

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
        if isinstance(loop, dict):
            loop = dict(loop)
            loop_type = loop.get('type')
            if loop_type is None and 'by_epoch' in loop:
                loop_type = EpochBasedTrainLoop if loop.pop('by_epoch') else IterBasedTrainLoop
            if isinstance(loop_type, str):
                loop_type = LOOP_NAMES.get(loop_type[len('mmengine.'):] if loop_type.startswith('mmengine.')
                                           else loop_type, loop_type)
            if loop_type in RESUMABLE_LOOPS:
                loop['type'] = RESUMABLE_LOOPS[loop_type]
        return super().build_train_loop(loop)

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
        for registered in self._hooks:
            if type(registered) is CheckpointHook:
                # Same state, crash-safe save order (AtomicCheckpointHook only overrides a method).
                registered.__class__ = AtomicCheckpointHook

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
            super().save_checkpoint(out_dir, osp.basename(temporary), **args)

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):
        """mmengine's ``load_checkpoint`` (used by ``load_from`` and resume) with clear errors for unreadable
        files and checkpoints of other models."""
        checkpoint = read_checkpoint_file(filename, map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        check_same_model(model, checkpoint, filename, revise_keys)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._loaded_checkpoint_meta = checkpoint.get('meta', {})
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        loop = self.train_loop
        if isinstance(loop, ResumableLoopMixin):
            loop.prepare_resume(getattr(self, '_loaded_checkpoint_meta', {}).get(RNG_META_KEY))
