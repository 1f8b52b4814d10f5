"""mmengine's Runner, hardened for long jobs on shared clusters.

Selected in our configs by ``runner_type = 'mmdavit.DaViTRunner'``, which mmdet's and mmseg's train/test
scripts (and therefore ``tools/train.py``, ``mim train``/``mim test``) honour. On top of mmengine 0.10's
Runner it adds:

* **Atomic checkpoints.** A checkpoint is written to ``.NAME.partial`` in the same folder and renamed onto
  ``NAME`` only once complete (``os.replace``); ``last_checkpoint`` is replaced the same way, and outdated
  checkpoints (``max_keep_ckpts``) are deleted only after the new one is in place. A job killed at any
  moment leaves the previous checkpoint and ``last_checkpoint`` valid (mmengine writes in place and deletes
  the oldest checkpoint *before* writing the new one).
* **Exact resume.** A run killed mid-epoch resumes at the same iteration with the same data order: the
  batches the interrupted epoch already trained on are skipped (mmengine's ``EpochBasedTrainLoop`` would
  replay the whole epoch and end with more iterations than planned). The Python, NumPy and torch random
  states are saved with each checkpoint and restored (single-process runs), and validation leaves them
  untouched, so a resumed run computes what the uninterrupted one would have. (Dataloader workers are
  seeded by mmengine when they start: with ``persistent_workers=True`` a run resumed after its first epoch
  draws other augmentations than the uninterrupted run did; the data order is still the same.)
* **Checkpoints that cannot be read, or belong to another model**, fail with an error naming the file and
  the cause, instead of a pickle/zip traceback or a silently unloaded model.
* **Mixed precision on CPU.** ``AmpOptimWrapper`` (``--amp``) asserts a GPU in mmengine; without one we run the
  feature extractor (backbone + neck) in bfloat16 autocast on the CPU, which needs no loss scaling, and the
  heads in float32 (see :class:`CPUAmpOptimWrapper`). With a GPU nothing changes.
* **Missing datasets** say how to prepare the data.
"""
import itertools
import logging
import os
import os.path as osp
import random
import re
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from mmengine.device import get_device
from mmengine.dist import get_world_size, is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
from mmengine.runner.loops import BaseLoop
from mmengine.utils import apply_to
from torch.utils.data import DataLoader

from mmdavit.registry import HOOKS, RUNNERS

DATASET_HINTS = {
    'CocoDataset': ('COCO: download train2017.zip, val2017.zip and annotations_trainval2017.zip from '
                    'cocodataset.org and unpack them so that data/coco/{train2017,val2017,annotations} exist '
                    '(README, "Real data"); or set train_dataloader.dataset.data_root (and the val/test ones and '
                    'val_evaluator.ann_file) to where your copy lives.'),
    'ADE20KDataset': ('ADE20K: download ADEChallengeData2016.zip (MIT Scene Parsing benchmark) and unzip it into '
                      'data/ade/ so that data/ade/ADEChallengeData2016/{images,annotations} exist (README, "Real '
                      'data"); or set the dataloaders\' dataset.data_root to your copy.'),
}
SYNTHETIC_HINT = 'To see everything work without downloads, run `make demo` (synthetic COCO/ADE-format data).'
RNG_META_KEY = 'rng_state'  # in checkpoint['meta']
PARTIAL_PREFIX, PARTIAL_SUFFIX = '.', '.partial'
AMP_TYPES = ('AmpOptimWrapper', 'mmengine.AmpOptimWrapper', AmpOptimWrapper)


def dataset_hint(dataloader_cfg: Dict) -> str:
    dataset_type = str(dataloader_cfg.get('dataset', {}).get('type', '')).split('.')[-1]
    how_to = DATASET_HINTS.get(dataset_type, f'Check the dataset paths of your {dataset_type or "dataset"} config.')
    return f'{how_to} {SYNTHETIC_HINT}'


# ---------------------------------------------------------------------------------------------------------
# Files: atomic replacement


def partial_path(path: str) -> str:
    """Where ``path`` is written before it is renamed into place: a hidden file in the same folder, so that
    the rename stays on one filesystem (atomic) and a crash leaves no file under the final name."""
    folder, name = osp.split(path)
    return osp.join(folder, f'{PARTIAL_PREFIX}{name}{PARTIAL_SUFFIX}')


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, 'O_DIRECTORY', 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success it atomically replaces ``path``, on failure it is removed
    and ``path`` is left as it was."""
    temporary = partial_path(path)
    try:
        yield temporary
        _fsync(temporary)  # the data is on disk before the name points at it
        os.replace(temporary, path)
        _fsync(osp.dirname(path) or '.', directory=True)
    except BaseException:
        if osp.exists(temporary):
            os.remove(temporary)
        raise


def write_text_atomically(path: str, text: str) -> None:
    with replacing(path) as temporary:
        with open(temporary, 'w') as f:
            f.write(text)


def is_local(path: str) -> bool:
    return isinstance(get_file_backend(path), LocalBackend)


# ---------------------------------------------------------------------------------------------------------
# Random states


def capture_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states, as types ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = dict(python=random.getstate(), numpy=(name, keys.tolist(), pos, has_gauss, cached),
                 torch=torch.get_rng_state(), world_size=get_world_size())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'].cpu())  # resume maps the checkpoint to the GPU
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])


@contextmanager
def preserved_rng(loop: 'ResumableLoopMixin') -> Iterator[None]:
    """Run validation without moving the training random streams: what training draws next does not depend
    on whether or when it validates, so resuming after a checkpoint taken before validation is exact."""
    state = capture_rng_state()
    loop.rng_state_outside_val = state
    try:
        yield
    finally:
        loop.rng_state_outside_val = None
        restore_rng_state(state)


# ---------------------------------------------------------------------------------------------------------
# Training loops that resume exactly


class ResumableLoopMixin:
    """Holds the random state to restore when the resumed run reaches the point where it was saved."""
    pending_rng_state: Optional[dict] = None
    rng_state_outside_val: Optional[dict] = None

    def restore_pending_rng_state(self) -> None:
        if self.pending_rng_state is not None:
            restore_rng_state(self.pending_rng_state)
            self.pending_rng_state = None

    def prepare_resume(self, rng_state: Optional[dict]) -> None:
        if rng_state is None:
            return
        if rng_state.get('world_size', 1) == 1 and get_world_size() == 1:
            self.pending_rng_state = rng_state
        else:  # only rank 0 saves: other ranks' states are not in the checkpoint
            print_log('Resume: random states are restored for single-process runs only; this distributed run '
                      'continues with freshly seeded generators (data order and optimizer state are exact)',
                      logger='current')

    def validate(self) -> None:
        with preserved_rng(self):
            self.runner.val_loop.run()


class ResumableEpochBasedTrainLoop(ResumableLoopMixin, EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that, when resumed mid-epoch, skips the batches of that epoch which were
    already trained on (they are still loaded, so data order and worker random streams stay aligned)."""

    batches_done_in_epoch: int = 0

    def prepare_resume(self, rng_state: Optional[dict]) -> None:
        super().prepare_resume(rng_state)
        per_epoch = len(self.dataloader)
        done = self._iter - self._epoch * per_epoch
        if not 0 <= done <= per_epoch:
            print_log(f'Resume: iteration {self._iter} is not within epoch {self._epoch + 1} of {per_epoch} '
                      'iterations (was the batch size or number of processes changed?); restarting that epoch '
                      'from its first batch', logger='current', level=logging.WARNING)
            done = 0
        elif 0 < done:
            print_log(f'Resume: skipping the first {done} of {per_epoch} batches of epoch {self._epoch + 1}, '
                      'already trained on before the interruption', logger='current')
        self.batches_done_in_epoch = done

    def run(self) -> torch.nn.Module:
        self.runner.call_hook('before_train')
        while self._epoch < self._max_epochs and not self.stop_training:
            self.run_epoch()
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._epoch >= self.val_begin
                    and (self._epoch % self.val_interval == 0 or self._epoch == self._max_epochs)):
                self.validate()
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_epoch(self) -> None:
        done, self.batches_done_in_epoch = self.batches_done_in_epoch, 0
        if done == 0:  # saved at an epoch boundary, before the next epoch's loader drew its seed
            self.restore_pending_rng_state()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        batches = enumerate(self.dataloader) if done < len(self.dataloader) else iter(())
        for _ in itertools.islice(batches, done):
            pass
        self.restore_pending_rng_state()  # saved after batch `done - 1`
        for idx, data_batch in batches:
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


class ResumableIterBasedTrainLoop(ResumableLoopMixin, IterBasedTrainLoop):
    """``IterBasedTrainLoop`` (which already skips trained batches on resume) with random-state restore and
    random-state-neutral validation."""

    def run(self) -> torch.nn.Module:
        self.runner.call_hook('before_train')
        # The whole run is one big epoch, as in mmengine.
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            print_log(f'Resume: advancing the dataloader {self._iter} batches to skip data already trained on',
                      logger='current')
            for _ in range(self._iter):
                next(self.dataloader_iterator)
        self.restore_pending_rng_state()
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):
                self.validate()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model


RESUMABLE_LOOPS = {EpochBasedTrainLoop: ResumableEpochBasedTrainLoop, IterBasedTrainLoop: ResumableIterBasedTrainLoop}
LOOP_NAMES = {'EpochBasedTrainLoop': EpochBasedTrainLoop, 'IterBasedTrainLoop': IterBasedTrainLoop}


# ---------------------------------------------------------------------------------------------------------
# Checkpoint hook that never leaves the job without a valid last checkpoint


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` in a crash-safe order: write the new checkpoint (atomically, see
    :meth:`DaViTRunner.save_checkpoint`), then point ``last_checkpoint`` at it (atomically), then delete the
    checkpoints beyond ``max_keep_ckpts``. ``DaViTRunner`` uses it wherever a config asks for
    ``CheckpointHook``."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, ckpt_filename, self.file_client_args,
                               save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
                               meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old_step in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves folders
                self.file_backend.rmtree(path)


# ---------------------------------------------------------------------------------------------------------
# Mixed precision without a GPU


class CPUAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` for hosts without an accelerator: bfloat16 autocast on the CPU.

    The autocast region is the model's ``extract_feat`` (backbone and neck of mmdet detectors, mmseg
    segmentors and mmpretrain classifiers; the whole forward for a model without one), and the features
    leave it in float32: the heads run in float32 because mmcv's CPU kernels (nms, RoIAlign) have no
    bfloat16 version. bfloat16 keeps float32's exponent range, so there is no loss scaling (a disabled
    scaler keeps AmpOptimWrapper's backward / step / state-dict code; a GPU checkpoint's scaler state is
    ignored on load).
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic', dtype: Union[str, torch.dtype, None] = None,
                 use_fsdp: bool = False, **kwargs):
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, dtype)
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f'Mixed precision on the CPU supports bfloat16 only, got optim_wrapper.dtype={dtype}; '
                             'set dtype="bfloat16" (float16 needs a GPU)')
        if use_fsdp:
            raise ValueError('AmpOptimWrapper(use_fsdp=True) needs GPUs')
        OptimWrapper.__init__(self, **kwargs)  # AmpOptimWrapper.__init__ asserts a GPU
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with OptimWrapper.optim_context(self, model), bfloat16_features(model):
            yield


@contextmanager
def bfloat16_features(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model.extract_feat`` under CPU bfloat16 autocast, returning float32 features."""
    target = model.module if is_model_wrapper(model) else model
    if not hasattr(target, 'extract_feat'):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            yield
        return
    extract_feat = target.extract_feat

    def autocast_extract_feat(*args, **kwargs):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            features = extract_feat(*args, **kwargs)
        return apply_to(features, lambda x: isinstance(x, torch.Tensor) and x.is_floating_point(),
                        lambda x: x.float())

    target.extract_feat = autocast_extract_feat  # an instance attribute shadows the method for this step
    try:
        yield
    finally:
        del target.extract_feat


# ---------------------------------------------------------------------------------------------------------
# The runner


def read_checkpoint_file(filename: str, map_location: Union[str, Callable]) -> dict:
    """mmengine's ``_load_checkpoint`` with errors that name the file and the likely cause."""
    try:
        checkpoint = _load_checkpoint(filename, map_location=map_location)
    except FileNotFoundError as error:
        raise FileNotFoundError(f'Checkpoint not found: {filename} (resume=True without load_from reads the path '
                                'from WORK_DIR/last_checkpoint)') from error
    except Exception as error:  # torch raises zip, pickle, EOF and runtime errors for bad files
        lines = str(error).splitlines()
        detail = next((line.strip() for line in lines if 'Unsupported global' in line), lines[0] if lines else '')
        raise ValueError(f'Could not read checkpoint {filename} ({type(error).__name__}: {detail}). Is the file '
                         'complete (an interrupted copy or download?) and saved by torch.save? When resuming, '
                         'point --resume at the previous checkpoint') from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f'Checkpoint {filename} holds a {type(checkpoint).__name__}, not a dict of tensors '
                         '(saved with torch.save(model) instead of a state dict?)')
    return checkpoint


def check_same_model(model: torch.nn.Module, checkpoint: dict, filename: str, revise_keys: list) -> None:
    """Raise when a checkpoint shares no parameter with ``model``, or carries a backbone none of whose keys
    are ours: that is a checkpoint of another model, which mmengine would load as nothing, with a warning."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    keys = list(state_dict) if isinstance(state_dict, dict) else []
    for pattern, replacement in revise_keys:
        keys = [re.sub(pattern, replacement, k) for k in keys]
    own = set(model.state_dict())
    shown = ', '.join(keys[:5]) or '(no keys)'
    if not own.intersection(keys):
        raise ValueError(f'Checkpoint {filename} shares no parameter with this {type(model).__name__} (its keys: '
                         f'{shown}, ...): is it a checkpoint of another model? Backbone-only weights (official, '
                         'timm or mmpretrain DaViT) go in model.backbone.init_cfg=dict(type="Pretrained", '
                         'checkpoint=...), not load_from')
    backbone_keys = [k for k in keys if k.startswith('backbone.')]
    if backbone_keys and any(k.startswith('backbone.') for k in own) and not own.intersection(backbone_keys):
        raise ValueError(f'Checkpoint {filename} has a backbone none of whose parameters this model has (e.g. '
                         f'{", ".join(backbone_keys[:3])}): it was trained with another backbone. Use a '
                         'checkpoint of this config, or load only the backbone via model.backbone.init_cfg')


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


__all__: List[str] = ['DaViTRunner', 'AtomicCheckpointHook', 'CPUAmpOptimWrapper', 'ResumableEpochBasedTrainLoop',
                      'ResumableIterBasedTrainLoop']
