"""Interrupted jobs: SIGKILL mid-epoch then ``--resume``, checkpoint writes that fail half-way, and the
checkpoints that resume and ``load_from`` read (torch >= 2.6 loads with ``weights_only=True``).

What mmengine 0.10 does alone, and what ``DaViTRunner`` changes (see ``mmdavit/engine/runner.py``):

* ``IterBasedTrainLoop`` resumes at the saved iteration and skips the batches already seen; the stock
  ``EpochBasedTrainLoop`` restarts the interrupted epoch from its first batch, training on those batches
  twice and ending with more iterations than planned. ``DaViTRunner`` skips them in both loops.
* Random states are not in mmengine checkpoints, so augmentation, dropout / drop path and RoI sampling
  diverge after a resume; ``DaViTRunner`` saves and restores them, and the resumed run is identical to the
  uninterrupted one.
* mmengine writes a checkpoint in place and deletes the oldest one (``max_keep_ckpts``) before writing the
  new one; ``DaViTRunner`` writes to a partial file and renames it into place, and the
  ``mmdavit.AtomicCheckpointHook`` our configs name then updates ``last_checkpoint``, then deletes.
"""
import os
import signal
import subprocess
import time

import pytest
import torch
from mmengine.fileio.backends.local_backend import LocalBackend

from mmdavit.compat import load_torch_file
from tests.commands import run
from tests.reliability.runs import LAYER_DECAY, build_runner, child_env, tool_command, write_config
from tests.reliability.trace_hook import read_trace

# Warmup changes the LR every iteration, and layer decay gives every layer its own LR, so a wrong scheduler
# or param-group state shows in the trace.
RESUMABLE = '''
randomness = dict(seed=7, deterministic=True)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
''' + LAYER_DECAY
EVERY_ITERATION = 'default_hooks = dict(checkpoint=dict(by_epoch=False, interval=1, max_keep_ckpts=2))\n'
# Each case trains 4 iterations and is killed after 2, once its checkpoint is written.
CASES = {
    # Mask R-CNN, EpochBasedTrainLoop: batch size 1 on 4 images, one 4-iteration epoch, killed mid-epoch.
    'maskrcnn-mid-epoch': dict(
        kind='detection', schedule='train_cfg = dict(max_epochs=1)\ntrain_dataloader = dict(batch_size=1)\n'
        + EVERY_ITERATION, pause='pause_at_iter=2', kept={'iter_1.pth': 1, 'iter_2.pth': 2}, final='iter_4.pth',
        resumed_at='resumed epoch: 0, iter: 2', note='skipping the first 2 of 4 batches of epoch 1'),
    # The same at an epoch boundary, with mmdet's usual checkpoint per epoch: 2 epochs of 2 iterations.
    'maskrcnn-epoch-end': dict(
        kind='detection', schedule='train_cfg = dict(max_epochs=2)\ntrain_dataloader = dict(batch_size=2)\n'
        'default_hooks = dict(checkpoint=dict(interval=1))\n', pause='pause_after_epoch=1',
        kept={'epoch_1.pth': 2}, final='epoch_2.pth', resumed_at='resumed epoch: 1, iter: 2', note=None),
    # UperNet, IterBasedTrainLoop over an infinite sampler; batch size 2 (its pooling module's BatchNorm
    # needs 2 samples).
    'upernet-iter-based': dict(
        kind='segmentation', schedule='train_cfg = dict(max_iters=4)\ntrain_dataloader = dict(batch_size=2)\n'
        + EVERY_ITERATION, pause='pause_at_iter=2', kept={'iter_1.pth': 1, 'iter_2.pth': 2}, final='iter_4.pth',
        resumed_at='resumed epoch: 0, iter: 2', note=None),
}


def start_training(config, work_dir, cwd):
    log = open(cwd / f'{work_dir.name}.log', 'w')
    return subprocess.Popen(tool_command('train.py', str(config), '--work-dir', str(work_dir)), cwd=cwd,
                            env=child_env(), stdout=log, stderr=subprocess.STDOUT)


def wait_for_checkpoint(process, work_dir, name, iterations, timeout=400):
    """Poll until ``last_checkpoint`` names ``name`` and the trace has ``iterations`` records."""
    pointer, trace = work_dir / 'last_checkpoint', work_dir / 'trace_rank0.jsonl'
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f'training exited ({process.returncode}) before writing {name}')
        if (pointer.is_file() and pointer.read_text().endswith(name) and trace.is_file()
                and len(read_trace(trace)) >= iterations):
            return
        time.sleep(0.2)
    pytest.fail(f'no {name} after {timeout}s')


def load(path):
    return load_torch_file(str(path), map_location='cpu')  # weights only on every torch (2.1: no allow-list)


def assert_same_tensors(a, b, what):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_same_tensors(a[key], b[key], f'{what}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f'{what}[{i}]')
    else:
        assert a == b, f'{what}: {a!r} != {b!r}'


@pytest.mark.slow
@pytest.mark.parametrize('case', sorted(CASES))
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, tiny_data, case):
    """Killed with SIGKILL after the checkpoint of iteration 2 of 4, the run resumes with ``tools/train.py
    --resume`` and ends exactly where an uninterrupted run ends: same iterations, images, flips, losses,
    per-group LRs, weights, optimizer and scheduler state."""
    kind, kept = CASES[case]['kind'], CASES[case]['kept']  # checkpoint name -> its iteration
    layers = [RESUMABLE + CASES[case]['schedule']]
    config = write_config(tmp_path / 'configs', kind, tiny_data, *layers)
    paused = write_config(tmp_path / 'configs_paused', kind, tiny_data, *layers,
                          f"custom_hooks = [dict(type='TraceHook', {CASES[case]['pause']})]\n")
    reference_dir, work_dir = tmp_path / 'reference', tmp_path / 'work'
    reference = start_training(config, reference_dir, tmp_path)
    killed = start_training(paused, work_dir, tmp_path)
    try:
        wait_for_checkpoint(killed, work_dir, max(kept, key=kept.get), iterations=2)
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        killed.kill()

    # What the killed job left: a valid last checkpoint (and the one before), no partial file.
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / max(kept, key=kept.get))
    assert sorted(p.name for p in work_dir.iterdir() if '.pth' in p.name and 'final' not in p.name) == sorted(kept)
    for name, iteration in kept.items():
        assert load(work_dir / name)['meta']['iter'] == iteration

    resumed_run = run(tool_command('train.py', str(config), '--work-dir', str(work_dir), '--resume'), cwd=tmp_path,
                      env=child_env(), timeout=300)
    output = resumed_run.stdout + resumed_run.stderr
    assert CASES[case]['resumed_at'] in output
    if CASES[case]['note']:  # mmengine alone would restart the epoch at its first batch
        assert CASES[case]['note'] in output
    assert reference.wait(timeout=400) == 0, (tmp_path / 'reference.log').read_text()[-3000:]

    expected, resumed = read_trace(reference_dir / 'trace_rank0.jsonl'), read_trace(work_dir / 'trace_rank0.jsonl')
    assert [r['iter'] for r in resumed] == [r['iter'] for r in expected] == [1, 2, 3, 4]
    assert len(set(expected[0]['lrs'])) > 1, 'layer decay should give the groups different LRs'
    for want, got in zip(expected, resumed):
        assert got['samples'] == want['samples'], f'iteration {want["iter"]}: data order or flips differ'
        assert got['lrs'] == want['lrs'], f'iteration {want["iter"]}: per-group LRs differ'
        assert got['losses'] == want['losses'], f'iteration {want["iter"]}: losses differ'

    final, reference_final = load(work_dir / CASES[case]['final']), load(reference_dir / CASES[case]['final'])
    assert final['meta']['iter'] == reference_final['meta']['iter'] == 4
    assert_same_tensors(final['state_dict'], reference_final['state_dict'], 'state_dict')
    assert_same_tensors(final['optimizer'], reference_final['optimizer'], 'optimizer')
    assert_same_tensors(final['param_schedulers'], reference_final['param_schedulers'], 'param_schedulers')


def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path, tiny_data, monkeypatch, disk_full_at):
    """A write that dies half-way (here: disk full) leaves the previous checkpoint, even with
    max_keep_ckpts=1, and last_checkpoint pointing at it; resuming from it then works."""
    every_iteration = 'default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=1))\n'
    config = write_config(tmp_path / 'configs', 'segmentation', tiny_data, every_iteration)
    resume_config = write_config(tmp_path / 'configs_resume', 'segmentation', tiny_data, every_iteration,
                                 'resume = True\n')
    work_dir = tmp_path / 'work'
    original_put = disk_full_at('iter_2')
    with pytest.raises(OSError, match='simulated'):
        build_runner(config, work_dir).train()
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_1.pth')
    assert sorted(p.name for p in work_dir.iterdir() if 'iter_' in p.name) == ['iter_1.pth']
    assert load(work_dir / 'iter_1.pth')['meta']['iter'] == 1

    monkeypatch.setattr(LocalBackend, 'put', original_put)
    build_runner(resume_config, work_dir).train()
    assert [r['iter'] for r in read_trace(work_dir / 'trace_rank0.jsonl')] == [1, 2]
    assert sorted(p.name for p in work_dir.iterdir() if 'iter_' in p.name) == ['iter_2.pth']
    assert load(work_dir / 'iter_2.pth')['meta']['iter'] == 2


class NotAllowListed:
    pass


def test_unreadable_or_foreign_checkpoints_fail_clearly(tmp_path, tiny_data):
    """``load_from`` and resume (both ``Runner.load_checkpoint``) name the file and the cause."""
    runner = build_runner(write_config(tmp_path, 'segmentation', tiny_data), tmp_path / 'work')
    own = runner.model.state_dict()
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': own, 'meta': {'iter': 3}}, good)
    bad = {
        'truncated.pth': good.read_bytes()[:len(good.read_bytes()) // 3],
        'notes.pth': b'not a checkpoint',
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf'Could not read checkpoint .*{name} .*Is the file complete'):
            runner.load_checkpoint(str(tmp_path / name))

    # weights_only stays on: only the types mmengine itself stores are allow-listed (mmdavit/compat.py).
    torch.save({'state_dict': own, 'meta': {'extra': NotAllowListed()}}, tmp_path / 'pickled_object.pth')
    with pytest.raises(ValueError, match=r'Refused to read .*pickled_object.pth: its pickle would import or call code '
                                         r'\(tests.reliability.test_resume.NotAllowListed\)'):
        runner.load_checkpoint(str(tmp_path / 'pickled_object.pth'))
    torch.save(runner.model.backbone, tmp_path / 'whole_module.pth')
    with pytest.raises(ValueError, match=r'Refused to read .*whole_module.pth: its pickle would import or call code'):
        runner.load_checkpoint(str(tmp_path / 'whole_module.pth'))

    foreign = {
        # another model altogether
        'resnet_classifier.pth': {'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(10, 64)},
        # the official / timm DaViT classification weights belong in the backbone's init_cfg
        'davit_backbone_only.pth': {k[len('backbone.'):]: v for k, v in own.items() if k.startswith('backbone.')},
    }
    for name, state_dict in foreign.items():
        torch.save({'state_dict': state_dict}, tmp_path / name)
        with pytest.raises(ValueError, match=rf'{name} shares no parameter with this EncoderDecoder.*init_cfg'):
            runner.load_checkpoint(str(tmp_path / name))
    # the same detector / segmentor type trained with another backbone: only the heads would load
    other_backbone = {k: v for k, v in own.items() if not k.startswith('backbone.')}
    other_backbone.update({'backbone.conv1.weight': torch.zeros(64, 3, 7, 7), 'backbone.bn1.weight': torch.ones(64)})
    torch.save({'state_dict': other_backbone}, tmp_path / 'upernet_r50.pth')
    with pytest.raises(ValueError, match="would load only 0.0% of the weights of this model's DaViT backbone .*"
                       'its backbone keys: backbone.conv1.weight'):
        runner.load_checkpoint(str(tmp_path / 'upernet_r50.pth'))

    with pytest.raises(FileNotFoundError, match='load_from checkpoint not found: .*missing.pth'):
        runner.load_checkpoint(str(tmp_path / 'missing.pth'))
    assert runner.load_checkpoint(str(good))['meta'] == {'iter': 3}  # and a good one still loads


def test_demo_configs_checkpoint_atomically_and_resume_exactly(tmp_path, tiny_data):
    """The configs name mmdavit.AtomicCheckpointHook (the crash-safe order) in default_hooks, and DaViTRunner
    turns mmengine's loops into the ones that resume exactly."""
    from mmengine.hooks import CheckpointHook

    from mmdavit.engine import AtomicCheckpointHook, ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop
    for kind, loop_type in [('detection', ResumableEpochBasedTrainLoop), ('segmentation', ResumableIterBasedTrainLoop)]:
        runner = build_runner(write_config(tmp_path / kind, kind, tiny_data), tmp_path / kind / 'work')
        checkpoint_hooks = [h for h in runner.hooks if isinstance(h, CheckpointHook)]
        assert [type(h) for h in checkpoint_hooks] == [AtomicCheckpointHook]
        assert type(runner.train_loop) is loop_type
