"""LayerDecayLRHook: its checks and warnings, the per-layer lr scalars it logs through a real Runner, and
resume continuity of the layer-decay param groups (train, save, resume in a new Runner)."""
import glob
import json
import logging
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.optim import OptimWrapperDict, build_optim_wrapper
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR, OneCycleLR, PolyLR
from mmengine.logging import MessageHub
from mmengine.runner import Runner

import mmdavit.engine.hooks as hooks
from mmdavit.engine import LayerDecayLRHook
from tests.engine.toys import LRD_OPTIM, MAX_ID, RUN_IDS, ToyClassifier, runner_kwargs


def make_runner(work_dir, max_iters=4, **kwargs) -> Runner:
    return Runner(**runner_kwargs(work_dir, max_iters, **kwargs))


def fake_runner(optim=LRD_OPTIM, schedulers=()):
    """What before_train reads from a runner, without building one."""
    return SimpleNamespace(optim_wrapper=build_optim_wrapper(ToyClassifier(), optim),
                           param_schedulers=list(schedulers), hooks=[], iter=0, train_dataloader=range(1000),
                           message_hub=MessageHub.get_instance(f'fake_runner_{next(RUN_IDS)}'))


@pytest.fixture
def warnings(monkeypatch):
    """The hook's warnings (print_log with level WARNING)."""
    messages = []
    monkeypatch.setattr(hooks, 'print_log', lambda msg, level=logging.INFO, **kwargs: messages.append(msg)
                        if level == logging.WARNING else None)
    return messages


def test_errors_when_the_constructor_is_missing():
    runner = fake_runner(dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)))
    with pytest.raises(RuntimeError, match="carry no layer_id / lr_scale.*constructor='mmdavit.DaViTLayerDecay"):
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


def test_lr_mult_zero_freezes_a_part_and_logs_its_layer_at_zero(warnings):
    """``custom_keys`` ``lr_mult=0`` (mmengine's way to freeze a part) trains, logs and passes the checks."""
    custom_keys = {'backbone.stem': dict(lr_mult=0.0), 'head.bias': dict(lr_mult=0.0)}
    runner = fake_runner(dict(LRD_OPTIM, paramwise_cfg=dict(decay_rate=0.8, custom_keys=custom_keys)))
    groups = runner.optim_wrapper.optimizer.param_groups
    frozen = [g for g in groups if g.get('lr_mult') == 0]
    assert {g['layer_id'] for g in frozen} == {0, MAX_ID} and all(g['lr'] == 0 for g in frozen)
    hook = LayerDecayLRHook(interval=1)
    hook.before_train(runner)
    hook.after_train_iter(runner, batch_idx=0)  # logs: the first log interval used to divide by lr_mult
    logged = {name: runner.message_hub.get_scalar(f'train/{name}_lr').current() for name in ('layer_0', 'layer_1',
                                                                                             'head')}
    assert logged == {'layer_0': 0.0, 'layer_1': pytest.approx(1e-3 * 0.8**(MAX_ID - 1)), 'head': pytest.approx(1e-3)}
    assert warnings == []  # frozen groups are not a broken decay


def test_warns_when_one_cycle_lr_erases_the_decay(warnings):
    """OneCycleLR(eta_max=float) gives every group the same lr: the hook says so, once, naming it."""
    runner = fake_runner()
    runner.param_schedulers = [OneCycleLR(runner.optim_wrapper, eta_max=1e-3, total_steps=10, by_epoch=False)]
    groups = runner.optim_wrapper.optimizer.param_groups
    hook = LayerDecayLRHook(interval=100)
    hook.before_train(runner)
    for step in range(2):
        runner.param_schedulers[0].step()
        hook.after_train_iter(runner, batch_idx=step)
    layer_0, head = hooks.layer_lrs(groups)['layer_0'], hooks.layer_lrs(groups)['head']
    assert layer_0 == pytest.approx(head)  # the decay really is gone
    assert len(warnings) == 1, warnings
    assert 'no longer follow the layer-wise decay' in warnings[0] and 'This run uses OneCycleLR' in warnings[0]


def test_warns_when_the_ratios_break_after_a_scheduler_step(warnings):
    """Checked after every iteration, not only at the start: here an absolute floor reached mid-run."""
    runner = fake_runner()
    groups = runner.optim_wrapper.optimizer.param_groups
    runner.param_schedulers = [LinearLR(runner.optim_wrapper, start_factor=0.1, by_epoch=False, begin=0, end=3)]
    hook = LayerDecayLRHook(interval=100)
    hook.before_train(runner)
    for step in range(3):  # warmup keeps the ratios: no warning
        runner.param_schedulers[0].step()
        hook.after_train_iter(runner, batch_idx=step)
    assert warnings == []
    for g in groups:  # what ReduceOnPlateauLR(min_value=5e-4) does to the lower layers (lr < 5e-4)
        g['lr'] = max(g['lr'], 5e-4)
    hook.after_train_iter(runner, batch_idx=3)
    hook.after_train_iter(runner, batch_idx=4)
    assert len(warnings) == 1 and 'Schedulers that set absolute learning rates' in warnings[0]
    assert 'is 0.001907 for layer_0_decay' in warnings[0]  # 5e-4 / 0.8 ** 6, where the head has 0.001


def test_a_frozen_group_that_a_scheduler_moved_is_named():
    groups = [dict(layer_id=0, lr=1e-4, lr_scale=0.5, lr_mult=0.0, group_name='layer_0_decay[backbone.stem]'),
              dict(layer_id=1, lr=1e-3, lr_scale=1.0)]
    assert hooks.decay_ratio_problem(groups) == ('group layer_0_decay[backbone.stem] has lr_mult=0 (frozen by '
                                                 'custom_keys) but lr 0.0001: a scheduler set it')
    del groups[0]['group_name']  # groups of another constructor: named by their layer
    assert hooks.decay_ratio_problem(groups).startswith('group layer 0 has lr_mult=0')


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
    # Exact (tolerance 0): the same state, data and kernels give the same floats; a lossy restore would not.
    torch.testing.assert_close(actual['state'], expected['state'], rtol=0, atol=0)
    torch.testing.assert_close(dict(resumed.model.named_parameters()), dict(uninterrupted.model.named_parameters()),
                               rtol=0, atol=0)
    for name in ('layer_0_lr', 'layer_3_lr', 'head_lr'):
        logged = [runner.message_hub.get_scalar(f'train/{name}').data[0][-2:].tolist()
                  for runner in (uninterrupted, resumed)]
        assert logged[0] == logged[1], name
