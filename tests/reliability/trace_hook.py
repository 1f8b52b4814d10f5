"""A test hook that records, per training iteration, what a reliability test compares between runs.

Imported by the training processes of the tests (``custom_imports``), so it is registered in mmengine's root
registry and resolves from any default scope. Each rank appends one JSON line per iteration to
``WORK_DIR/trace_rank{rank}.jsonl`` (flushed at once, so a killed process keeps what it recorded) and, at the
end of training, saves its model state to ``WORK_DIR/final_state_rank{rank}.pth``.
"""
import json
import os.path as osp
import time
from typing import Optional

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


def sample_info(sample) -> dict:
    meta = sample.metainfo
    return dict(img_path=osp.basename(meta['img_path']), flip=bool(meta.get('flip', False)))


@HOOKS.register_module()
class TraceHook(Hook):
    """Args:
        pause_at_iter (int, optional): after recording this iteration (and after its checkpoint, which the
            checkpoint hook writes earlier in the same stage), sleep until killed.
        pause_after_epoch (int, optional): the same at the end of this epoch (counted from 1).
    """
    priority = 'LOWEST'  # after the checkpoint hook

    def __init__(self, pause_at_iter: Optional[int] = None, pause_after_epoch: Optional[int] = None):
        self.pause_at_iter = pause_at_iter
        self.pause_after_epoch = pause_after_epoch

    def trace_path(self, runner) -> str:
        return osp.join(runner.work_dir, f'trace_rank{get_rank()}.jsonl')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        record = dict(
            iter=runner.iter + 1,
            epoch=runner.epoch,
            batch_idx=batch_idx,
            samples=[sample_info(s) for s in data_batch['data_samples']],
            losses={k: float(v.detach() if hasattr(v, 'detach') else v) for k, v in (outputs or {}).items()},
            lrs=[group['lr'] for group in runner.optim_wrapper.optimizer.param_groups],
        )
        with open(self.trace_path(runner), 'a') as f:
            f.write(json.dumps(record) + '\n')
        if record['iter'] == self.pause_at_iter:
            time.sleep(3600)

    def after_train_epoch(self, runner) -> None:
        if runner.epoch + 1 == self.pause_after_epoch:
            time.sleep(3600)

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'final_state_rank{get_rank()}.pth'))


def read_trace(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
