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
from typing import Iterator, Optional

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

RNG_META_KEY = 'rng_state'  # in checkpoint['meta']


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
