"""Tiny runs for the resume tests: the toy DaViT classifier (``toys.py``) on data that says which samples each
iteration trained on, and runner arguments for DaViTRunner, DaViTFlexibleRunner + DaViTFSDPStrategy, and both
on 2 gloo ranks (launched by the test)."""
import os.path as osp

import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from tests.engine.toys import RUN_IDS, ToyClassifier, ToyData

SAMPLES = 8  # one epoch: 8 iterations of 1 sample, 4 of 2, 4 of 1 on each of 2 ranks
PLAIN_OPTIM = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
DDP_WRAPPER = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False)


class IndexedToyData(ToyData):
    """``ToyData`` whose samples also carry their index, shuffled by mmengine's ``DefaultSampler``."""

    def __len__(self):
        return SAMPLES

    def __getitem__(self, index):
        return dict(super().__getitem__(index), index=index)


class IndexedToyClassifier(ToyClassifier):

    def forward(self, inputs, labels=None, index=None, mode='tensor'):
        return super().forward(inputs, labels, mode)


@HOOKS.register_module(force=True)
class SampleProbe(Hook):
    """Records which samples each iteration trains on (``samples``: ``[(iteration, [index, ...]), ...]``, also
    written to ``samples_rank{r}.pth`` after training) and the model and optimizer state before training
    (gathered under FSDP; ``before_train.pth``, rank 0). ``stop=True`` ends the run right there."""
    priority = 'LOWEST'

    def __init__(self, stop: bool = False):
        self.stop = stop
        self.samples = []

    def before_train(self, runner):
        strategy = getattr(runner, 'strategy', None)
        if strategy is not None:
            state = dict(state_dict=strategy.model_state_dict(), optimizer=strategy.optim_state_dict())
        else:
            model = runner.model.module if hasattr(runner.model, 'module') else runner.model
            state = dict(state_dict=model.state_dict(), optimizer=runner.optim_wrapper.state_dict())
        if runner.rank == 0:
            torch.save(state, osp.join(runner.work_dir, 'before_train.pth'))
        if self.stop:
            runner.train_loop.stop_training = True

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.samples.append((runner.iter + 1, data_batch['index'].tolist()))

    def after_train(self, runner):
        torch.save(self.samples, osp.join(runner.work_dir, f'samples_rank{runner.rank}.pth'))


def toy_model(cls=None) -> ToyClassifier:
    """The toy classifier initialised from seed 0 whatever the runner draws first (DaViTRunner and
    FlexibleRunner draw differently between seeding and ``init_weights``; the head is not in
    ``init_weights`` at all), so that runs of both runners start from the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = (cls or IndexedToyClassifier)()
        model.init_weights()  # the runner's call then changes nothing
    return model


def toy_run(work_dir, *, batch_size: int = 1, flexible: bool = False, distributed: bool = False,
            by_epoch: bool = True, iterations: int = 0, checkpoint_every: int = 1, **overrides) -> dict:
    """Arguments of a runner of the toy classifier, one epoch (``by_epoch``) or ``iterations`` iterations, a
    checkpoint every ``checkpoint_every`` iterations, shuffled data, plain AdamW. ``flexible``:
    DaViTFlexibleRunner with DaViTFSDPStrategy (sharded when ``distributed``); else DaViTRunner (DDP when
    ``distributed``)."""
    kwargs = dict(
        model=toy_model(),
        work_dir=str(work_dir),
        experiment_name=f'resume_{osp.basename(str(work_dir))}_{next(RUN_IDS)}',
        train_dataloader=dict(dataset=IndexedToyData(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=batch_size, num_workers=0, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=True, max_epochs=1) if by_epoch else dict(by_epoch=False, max_iters=iterations),
        optim_wrapper=PLAIN_OPTIM,
        param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=4)],
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='mmdavit.AtomicCheckpointHook', interval=checkpoint_every,
                                           by_epoch=False, max_keep_ckpts=-1)),
        custom_hooks=[dict(type='SampleProbe')],
        randomness=dict(seed=0))
    if distributed:
        kwargs.update(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo')))
    if flexible:
        kwargs['strategy'] = dict(type='mmdavit.DaViTFSDPStrategy')
    elif distributed:  # DaViTRunner reads it from its config
        kwargs['cfg'] = dict(model_wrapper_cfg=DDP_WRAPPER)
    kwargs.update(overrides)
    return kwargs


def build(kwargs: dict, flexible: bool):
    from mmdavit.engine import DaViTFlexibleRunner, DaViTRunner
    return (DaViTFlexibleRunner if flexible else DaViTRunner)(**kwargs)


def probe_of(runner) -> SampleProbe:
    return next(hook for hook in runner._hooks if isinstance(hook, SampleProbe))


def load(path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


def weights(path) -> dict:
    state = load(path)['state_dict']
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


class TruncatedToyClassifier(IndexedToyClassifier):
    """The toy classifier on DaViT stages 0..2 only (``out_indices=(0, 1, 2)``), all three used, as a 3-level
    neck uses them (the pooled features of each, side by side)."""

    def __init__(self):
        super().__init__(out_indices=(0, 1, 2))
        self.head = torch.nn.Linear(32 + 64 + 128, 4)

    def forward(self, inputs, labels=None, index=None, mode='tensor'):
        logits = self.head(torch.cat([features.mean((2, 3)) for features in self.backbone(inputs)], dim=1))
        return dict(loss=F.cross_entropy(logits, labels)) if mode == 'loss' else logits
