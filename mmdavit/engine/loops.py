"""mmengine's training loops, resuming exactly where a killed run stopped.

A run killed mid-epoch resumes at the same iteration with the same data order: the batches the interrupted
epoch already trained on are skipped (mmengine's ``EpochBasedTrainLoop`` would replay the whole epoch and end
with more iterations than planned). The Python, NumPy and torch random states are saved with each checkpoint
(``DaViTRunner.save_checkpoint``) and restored (single-process runs), and validation leaves them untouched.
"""
import itertools
import logging
import random
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from torch.utils.data import BatchSampler

RNG_META_KEY = 'rng_state'  # in checkpoint['meta']
SHAPE_META_KEY = 'data_shape'  # in checkpoint['meta']: batch size, number of processes (ResumableLoopMixin.shape)


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


def processes(count: int) -> str:
    return 'one process' if count == 1 else f'{count} processes'


def batch_size_of(dataloader) -> Optional[int]:
    """Samples per batch on each process (mmdet's configs give it to a batch sampler, not the DataLoader)."""
    return getattr(dataloader, 'batch_size', None) or getattr(getattr(dataloader, 'batch_sampler', None),
                                                              'batch_size', None)


class ResumableLoopMixin:
    """Holds the random state to restore when the resumed run reaches the point where it was saved, and what
    a resume needs to find that point when the batch size or the number of processes changed: the checkpoint
    records both (``shape``), and a resume skips the *samples* already trained on (an iteration of ``B``
    samples on each of ``N`` processes trains the next ``B * N`` samples of the sampler's order)."""
    pending_rng_state: Optional[dict] = None
    rng_state_outside_val: Optional[dict] = None

    def restore_pending_rng_state(self) -> None:
        if self.pending_rng_state is not None:
            restore_rng_state(self.pending_rng_state)
            self.pending_rng_state = None

    def shape(self) -> dict:
        """What a checkpoint records (``SHAPE_META_KEY``) to find its place in the data again."""
        return dict(batch_size=batch_size_of(self.dataloader), world_size=get_world_size())

    def prepare_resume(self, rng_state: Optional[dict], shape: Optional[dict] = None) -> None:
        """Find the saved place in the data (``shape``: the checkpoint's ``SHAPE_META_KEY``; checkpoints
        without it are taken to have this run's) and keep ``rng_state`` (rank 0's saved random states) to
        restore there, when both runs are single-process. ``rng_state=None``: the caller restores them."""
        self.find_resume_position(shape)
        if rng_state is None:
            return
        saved, now = rng_state.get('world_size', 1), get_world_size()
        if saved == 1 and now == 1:
            self.pending_rng_state = rng_state
            return
        why = ('random states are restored for single-process runs, and for distributed ones by '
               'DaViTFlexibleRunner from its checkpoints (DaViTRunner saves rank 0\'s only)' if saved == now else
               f'the checkpoint holds the random states of a run of {processes(saved)}')
        print_log(f'Resume: {why}, so this run of {processes(now)} continues with freshly seeded random '
                  'generators: random augmentation, dropout and drop path draw other numbers than the uninterrupted '
                  'run would have', logger='current', level=logging.WARNING)

    def find_resume_position(self, shape: Optional[dict]) -> None:
        raise NotImplementedError

    def same_shape(self, saved: dict) -> bool:
        now = self.shape()
        return (None in (saved.get('batch_size'), now['batch_size'])  # unknown: as before shapes were recorded
                or (saved['batch_size'], saved['world_size']) == (now['batch_size'], now['world_size']))

    def batches_for(self, samples: int, saved: dict, where: str, continues: Callable[[int], str]) -> int:
        """How many of this run's batches cover ``samples``, trained on by batches of the ``saved`` shape
        (another batch size or number of processes), with a warning that says what happens and, by
        ``continues(batches)``, where training continues."""
        now = self.shape()
        step = now['batch_size'] * now['world_size']
        skip, extra = divmod(samples, step)
        if type(getattr(self.dataloader, 'batch_sampler', None)) is BatchSampler:
            order = ('the data order continues exactly' if not extra else
                     f'the {extra} samples after them, trained on before the interruption, are trained on again')
        else:  # e.g. mmdet's AspectRatioBatchSampler: a batch is not a run of consecutive samples
            order = (f'{type(self.dataloader.batch_sampler).__name__} groups samples into batches itself, so the '
                     'samples skipped are about, not exactly, those trained on')
        print_log(f'Resume: the checkpoint had trained on {samples} samples of {where}, in batches of '
                  f'{saved["batch_size"]} on {processes(saved["world_size"])}; this run takes {now["batch_size"]} '
                  f'per batch on {processes(now["world_size"])}, so it skips its first {skip} batches ({skip * step} '
                  f'samples) and {order}. {continues(skip)}; parameter schedules by iteration (e.g. warmup) '
                  'continue from the step count of the checkpoint', logger='current', level=logging.WARNING)
        return skip

    def validate(self) -> None:
        with preserved_rng(self):
            self.runner.val_loop.run()


class ResumableEpochBasedTrainLoop(ResumableLoopMixin, EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` that, when resumed mid-epoch, skips the batches of that epoch which were
    already trained on (they are still loaded, so data order and worker random streams stay aligned)."""

    batches_done_in_epoch: int = 0

    def shape(self) -> dict:
        return dict(super().shape(), epoch_length=len(self.dataloader))

    def find_resume_position(self, shape: Optional[dict]) -> None:
        per_epoch = len(self.dataloader)
        saved = shape or self.shape()
        saved_per_epoch = saved.get('epoch_length', per_epoch)
        done = self._iter - self._epoch * saved_per_epoch
        if not 0 <= done <= saved_per_epoch:  # a checkpoint without its shape, of another one
            print_log(f'Resume: iteration {self._iter} is not within epoch {self._epoch + 1} of {saved_per_epoch} '
                      'iterations (was the batch size or number of processes changed?); restarting that epoch '
                      'from its first batch', logger='current', level=logging.WARNING)
            done = 0
        elif done == saved_per_epoch:  # saved after the epoch's last iteration: all of it is done
            done = per_epoch
        elif self.same_shape(saved):
            if done:
                print_log(f'Resume: skipping the first {done} of {per_epoch} batches of epoch {self._epoch + 1}, '
                          'already trained on before the interruption', logger='current')
        else:
            samples = done * saved['batch_size'] * saved['world_size']
            done = self.batches_for(samples, saved, f'epoch {self._epoch + 1}', lambda skip: (
                f'It continues at iteration {self._epoch * per_epoch + skip + 1} (iterations count this run\'s '
                f'batches, {per_epoch} per epoch)'))
        self._iter = self._epoch * per_epoch + done  # in this run's batches
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
    random-state-neutral validation. Checkpoints record how many samples of the sampler's stream the run has
    trained on, which a resume with another batch size or number of processes skips."""

    samples_done: int = 0  # of the sampler's stream, by all processes (what a checkpoint records)
    batches_to_skip: int = 0

    def shape(self) -> dict:
        return dict(super().shape(), samples=self.samples_done)

    def find_resume_position(self, shape: Optional[dict]) -> None:
        now = self.shape()
        saved = shape or now
        step = (now['batch_size'] or 1) * now['world_size']
        if self.same_shape(saved):
            samples = saved.get('samples') or self._iter * step
            self.batches_to_skip = samples // step
        else:
            samples = saved.get('samples', self._iter * saved['batch_size'] * saved['world_size'])
            self.batches_to_skip = self.batches_for(samples, saved, 'the data', lambda skip: (
                f'It continues at iteration {self._iter + 1} of {self._max_iters}, each of {step} samples now '
                '(max_iters counts iterations, whatever their size)'))
        self.samples_done = self.batches_to_skip * step

    def run_iter(self, data_batch) -> None:
        self.samples_done += (batch_size_of(self.dataloader) or 1) * get_world_size()  # as its checkpoint says
        super().run_iter(data_batch)

    def run(self) -> torch.nn.Module:
        self.runner.call_hook('before_train')
        # The whole run is one big epoch, as in mmengine.
        self.runner.call_hook('before_train_epoch')
        if self.batches_to_skip:
            print_log(f'Resume: advancing the dataloader {self.batches_to_skip} batches to skip data already '
                      'trained on', logger='current')
            for _ in range(self.batches_to_skip):
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


def resumable_loop(loop: dict) -> dict:
    """mmengine's epoch- and iteration-based loop configs as their resumable versions (custom loops stay)."""
    loop = dict(loop)
    loop_type = loop.get('type')
    if loop_type is None and 'by_epoch' in loop:
        loop_type = EpochBasedTrainLoop if loop.pop('by_epoch') else IterBasedTrainLoop
    if isinstance(loop_type, str):
        loop_type = LOOP_NAMES.get(loop_type[len('mmengine.'):] if loop_type.startswith('mmengine.') else loop_type,
                                   loop_type)
    if loop_type in RESUMABLE_LOOPS:
        loop['type'] = RESUMABLE_LOOPS[loop_type]
    return loop
