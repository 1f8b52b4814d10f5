"""A tiny DaViT classifier and data that a real (DaViT)Runner trains in about a second per iteration."""
import itertools
import os.path as osp

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch.utils.data import Dataset

from mmdavit.models import DaViT

RUN_IDS = itertools.count()  # unique experiment names: mmengine shares loggers and message hubs by name
ARCH = dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
MAX_ID = 6  # stem 0, DaViT layers 1..5, the head 6
LRD_OPTIM = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                 constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor', paramwise_cfg=dict(decay_rate=0.8))


class ToyClassifier(BaseModel):
    """Tiny DaViT + linear head, enough for the Runner's train loop."""

    def __init__(self, num_classes: int = 4, out_indices: tuple = (3, )):
        super().__init__()
        self.backbone = DaViT(arch=ARCH, window_size=4, out_indices=out_indices, drop_path_rate=0.0)
        self.head = nn.Linear(256, num_classes)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head(self.backbone(inputs)[-1].mean((2, 3)))
        return dict(loss=F.cross_entropy(logits, labels)) if mode == 'loss' else logits


class ToyData(Dataset):
    """One epoch is 4 iterations: the Runner's infinite loader sleeps 2 s whenever an epoch ends."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        inputs = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(index))
        return dict(inputs=inputs, labels=index % 4)


def runner_kwargs(work_dir, max_iters: int = 4, model: nn.Module = None, **overrides) -> dict:
    """Runner arguments: iteration-based training with layer decay, warmup then cosine, logging every
    iteration, a checkpoint every 2 iterations and LayerDecayLRHook."""
    kwargs = dict(
        model=model or ToyClassifier(),
        work_dir=str(work_dir),
        experiment_name=f'toy_{osp.basename(str(work_dir))}_{next(RUN_IDS)}',
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                              num_workers=0, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=LRD_OPTIM,
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
                         dict(type='CosineAnnealingLR', T_max=4, eta_min=0.0, by_epoch=False, begin=2, end=6)],
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=[dict(type='mmdavit.LayerDecayLRHook')],
        randomness=dict(seed=0))
    kwargs.update(overrides)
    return kwargs
