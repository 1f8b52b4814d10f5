"""LayerDecayLRHook: its checks and warnings, the per-layer lr scalars it logs through a real Runner, and
resume continuity of the layer-decay param groups (train, save, resume in a new Runner)."""
import glob
import json
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict, build_optim_wrapper
from mmengine.optim.scheduler import CosineAnnealingLR, PolyLR
from mmengine.runner import Runner
from torch.utils.data import Dataset

import mmdavit.engine.hooks as hooks
from mmdavit.engine import LayerDecayLRHook
from mmdavit.models import DaViT

ARCH = dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
MAX_ID = 6
LRD_OPTIM = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                 constructor='DaViTLayerDecayOptimWrapperConstructor', paramwise_cfg=dict(decay_rate=0.8))


class ToyClassifier(BaseModel):
    """Tiny DaViT + linear head, enough for the Runner's train loop."""

    def __init__(self):
        super().__init__()
        self.backbone = DaViT(arch=ARCH, window_size=4, out_indices=(3, ), drop_path_rate=0.0)
        self.head = nn.Linear(256, 4)

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


def make_runner(work_dir, max_iters=4, **kwargs) -> Runner:
    return Runner(
        model=ToyClassifier(),
        work_dir=str(work_dir),
        experiment_name=f'lrd_{osp.basename(str(work_dir))}',
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                              num_workers=0, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=LRD_OPTIM,
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
                         dict(type='CosineAnnealingLR', T_max=4, eta_min=0.0, by_epoch=False, begin=2, end=6)],
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=[dict(type='LayerDecayLRHook')],
        randomness=dict(seed=0),
        **kwargs)


def fake_runner(optim=LRD_OPTIM, schedulers=()):
    """What before_train reads from a runner, without building one."""
    return SimpleNamespace(optim_wrapper=build_optim_wrapper(ToyClassifier(), optim),
                           param_schedulers=list(schedulers), hooks=[])


def test_errors_when_the_constructor_is_missing():
    runner = fake_runner(dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)))
    with pytest.raises(RuntimeError, match="carry no layer_id / lr_scale.*constructor='DaViTLayerDecay"):
        LayerDecayLRHook().before_train(runner)


def test_errors_when_scales_are_not_monotone():
    runner = fake_runner()
    groups = runner.optim_wrapper.optimizer.param_groups
    next(g for g in groups if g['layer_id'] == 2)['lr_scale'] = 0.99
    with pytest.raises(ValueError, match='one layer id must have one scale'):
        LayerDecayLRHook().before_train(runner)
    for g in groups:
        if g['layer_id'] == 2:
            g['lr_scale'] = 0.99
    with pytest.raises(ValueError, match='not monotone: layer 2 has 0.99 > layer 3 has 0.512'):
        LayerDecayLRHook().before_train(runner)


def test_errors_when_a_resume_would_ignore_new_decay_settings():
    runner = fake_runner(dict(LRD_OPTIM, paramwise_cfg=dict(decay_rate=0.9)))
    checkpoint = fake_runner().optim_wrapper.state_dict()  # written with decay_rate=0.8
    runner.optim_wrapper.load_state_dict(checkpoint)
    with pytest.raises(RuntimeError, match='resumed from the checkpoint, but the config builds'):
        LayerDecayLRHook().before_train(runner)


def test_rejects_several_optimizers_and_bad_interval():
    runner = fake_runner()
    runner.optim_wrapper = OptimWrapperDict(a=runner.optim_wrapper)
    with pytest.raises(TypeError, match='single optimizer'):
        LayerDecayLRHook().before_train(runner)
    with pytest.raises(ValueError, match='positive int'):
        LayerDecayLRHook(interval=0)


@pytest.mark.parametrize('scheduler, warns', [
    (dict(type=PolyLR, eta_min=1e-6), True),
    (dict(type=PolyLR, eta_min=0.0), False),
    (dict(type=CosineAnnealingLR, T_max=4, eta_min_ratio=0.01), False),
])
def test_warns_about_absolute_eta_min(monkeypatch, scheduler, warns):
    messages = []
    monkeypatch.setattr(hooks, 'print_log', lambda msg, **kwargs: messages.append(msg))
    runner = fake_runner()
    scheduler = dict(scheduler)
    runner.param_schedulers = [scheduler.pop('type')(runner.optim_wrapper, by_epoch=False, **scheduler)]
    LayerDecayLRHook().before_train(runner)
    assert any('eta_min=1e-06, an absolute floor' in m for m in messages) == warns
    assert messages[-1] == ('LayerDecayLRHook: 7 layer ids, lr_scale 0.2621 (layer_0) to 1 (head); logging '
                            'layer_0_lr ... head_lr every 10 iterations')


def test_layer_lrs_divide_out_custom_lr_mult():
    groups = [dict(layer_id=0, lr=1.0), dict(layer_id=1, lr=30.0, lr_mult=10.0), dict(layer_id=1, lr=3.0)]
    assert hooks.layer_lrs(groups) == {'layer_0': 1.0, 'head': 3.0}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory) -> Runner:
    """4 iterations (2 of warmup, then cosine), logging every iteration, checkpoints at 2 and 4."""
    runner = make_runner(tmp_path_factory.mktemp('uninterrupted'))
    runner.train()
    return runner


def test_logs_per_layer_lrs_to_log_json_and_message_hub(uninterrupted):
    runner = uninterrupted
    groups = runner.optim_wrapper.optimizer.param_groups
    names = [f'layer_{i}_lr' for i in range(MAX_ID)] + ['head_lr']
    base_lrs = runner.message_hub.get_scalar('train/base_lr').data[0]
    assert len(base_lrs) == 4 and len(set(base_lrs.tolist())) == 3  # warmup 1e-4, 1e-3, then cosine
    for layer_id, name in enumerate(names):
        logged = runner.message_hub.get_scalar(f'train/{name}').data[0]
        scale = next(g['lr_scale'] for g in groups if g['layer_id'] == layer_id)
        assert logged.tolist() == pytest.approx((base_lrs * scale).tolist(), rel=1e-9), name
    (scalars_file, ) = glob.glob(osp.join(runner.log_dir, 'vis_data', 'scalars.json'))
    records = [json.loads(line) for line in open(scalars_file)]
    assert len(records) == 4 and all(set(names) <= set(record) for record in records)
    assert records[0]['head_lr'] == pytest.approx(1e-4) and records[0]['layer_0_lr'] == pytest.approx(1e-4 * 0.8**6)
    (log_file, ) = glob.glob(osp.join(runner.log_dir, '*.log'))
    assert 'layer_0_lr: 2.6214e-05' in open(log_file).read()  # scientific notation, like lr


def test_resume_continues_groups_and_optimizer_state_exactly(uninterrupted, tmp_path):
    resumed = make_runner(tmp_path, load_from=osp.join(uninterrupted.work_dir, 'iter_2.pth'), resume=True)
    resumed.train()  # iterations 3 and 4, after LayerDecayLRHook re-checked the resumed groups
    assert resumed.iter == uninterrupted.iter == 4
    assert resumed.optim_wrapper.layer_decay_groups == uninterrupted.optim_wrapper.layer_decay_groups
    expected, actual = uninterrupted.optim_wrapper.state_dict(), resumed.optim_wrapper.state_dict()
    assert actual['param_groups'] == expected['param_groups']  # lr, initial_lr, names, ids, scales: exact
    assert actual['base_param_settings']['lr'] == expected['base_param_settings']['lr']
    torch.testing.assert_close(actual['state'], expected['state'])
    torch.testing.assert_close(dict(resumed.model.named_parameters()), dict(uninterrupted.model.named_parameters()))
    for name in ('layer_0_lr', 'layer_3_lr', 'head_lr'):
        logged = [runner.message_hub.get_scalar(f'train/{name}').data[0][-2:].tolist()
                  for runner in (uninterrupted, resumed)]
        assert logged[0] == logged[1], name
