"""Resumes that change something, in one process on the toy DaViT classifier (``resume_toys.py``):

* another batch size: the resumed run skips the *samples* the checkpoint trained on (an epoch-based and an
  iteration-based run), and says what happens when they do not fill whole batches;
* another ``param_scheduler`` or optimizer setting: the checkpoint's win, with a warning (DaViTRunner and
  DaViTFlexibleRunner alike);
* ``DaViTFlexibleRunner``: checkpoint names with a folder, atomically; ``load_from_skip_backbone`` under
  ``DaViTFSDPStrategy`` (one process; 2 ranks in ``test_fsdp_resume.py``) and refused by name elsewhere;
* ``out_indices=(0, 1, 2)``: stage 3 is not built, and full checkpoints still load.

The runs on 2 ranks (FSDP <-> DDP, 1 <-> 2 ranks) are in ``test_fsdp_resume.py``."""
import logging
import re
from pathlib import Path

import pytest
import torch
from mmengine.runner.checkpoint import load_state_dict

from mmdavit.models import DaViT
from tests.engine.resume_toys import (SAMPLES, TruncatedToyClassifier, build, load, probe_of, toy_run, weights)
from tests.engine.toys import ARCH


def order_of(samples: list) -> list:
    return [index for _, batch in samples for index in batch]


def messages(records, level=logging.WARNING) -> str:
    return '\n'.join(r.getMessage() for r in records if r.levelno >= level)


def log_of(work_dir: Path) -> str:
    """What a run logged (its runner's logger, which the ``log_records`` fixture does not see)."""
    return '\n'.join(p.read_text() for p in Path(work_dir).rglob('*.log'))


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory) -> dict:
    """One epoch, 8 iterations of 1 sample (checkpoints iter_1..8), and its sample order."""
    work_dir = tmp_path_factory.mktemp('uninterrupted')
    runner = build(toy_run(work_dir), flexible=False)
    runner.train()
    samples = probe_of(runner).samples
    assert [iteration for iteration, _ in samples] == list(range(1, SAMPLES + 1))
    assert sorted(order_of(samples)) == list(range(SAMPLES)), 'one epoch: every sample once'
    return dict(work_dir=work_dir, order=order_of(samples))


@pytest.mark.parametrize('saved_at,trains_again', [(4, 0), (3, 1)])
def test_resume_with_another_batch_size_skips_the_samples_trained_on(uninterrupted, tmp_path, saved_at, trains_again):
    """Checkpoint after ``saved_at`` samples (batches of 1), resumed with batches of 2: the resumed run skips
    ``saved_at // 2`` batches and trains the rest of the epoch in the uninterrupted run's order; with an odd
    ``saved_at`` the sample before them trains twice, and the log says so. (Skipping ``saved_at`` batches of
    2, as before, would skip samples never trained on.)"""
    order = uninterrupted['order']
    checkpoint = uninterrupted['work_dir'] / f'iter_{saved_at}.pth'
    assert load(checkpoint)['meta']['data_shape'] == dict(batch_size=1, world_size=1, epoch_length=SAMPLES)
    runner = build(toy_run(tmp_path, batch_size=2, load_from=str(checkpoint), resume=True), flexible=False)
    runner.train()
    skipped = saved_at // 2
    expected = [(skipped + 1 + i, order[start:start + 2]) for i, start in enumerate(range(2 * skipped, SAMPLES, 2))]
    assert probe_of(runner).samples == expected
    log = log_of(tmp_path)
    assert (f'the checkpoint had trained on {saved_at} samples of epoch 1, in batches of 1 on one process; this '
            f'run takes 2 per batch on one process, so it skips its first {skipped} batches ({2 * skipped} samples)'
            in log)
    assert ('the data order continues exactly' if not trains_again else
            'the 1 samples after them, trained on before the interruption, are trained on again') in log
    assert f'It continues at iteration {skipped + 1} (iterations count this run\'s batches, 4 per epoch)' in log


def test_iteration_based_resume_with_another_batch_size(tmp_path):
    """Iteration-based (InfiniteSampler): 4 iterations of 1 sample, resumed with batches of 2 to iteration 5:
    it trains samples 4 and 5 of the uninterrupted stream, and its checkpoint records 6 samples."""
    sampler = dict(type='InfiniteSampler', shuffle=True)

    def run(work_dir, batch_size, iterations, **kwargs):
        arguments = toy_run(work_dir, batch_size=batch_size, by_epoch=False, iterations=iterations, **kwargs)
        arguments['train_dataloader']['sampler'] = sampler
        runner = build(arguments, flexible=False)
        runner.train()
        return probe_of(runner).samples

    order = order_of(run(tmp_path / 'uninterrupted', 1, 6))
    resumed = run(tmp_path / 'resumed', 2, 5, load_from=str(tmp_path / 'uninterrupted' / 'iter_4.pth'), resume=True)
    assert resumed == [(5, order[4:6])]
    assert ('trained on 4 samples of the data, in batches of 1 on one process; this run takes 2 per batch on one '
            'process, so it skips its first 2 batches (4 samples) and the data order continues exactly. It '
            'continues at iteration 5 of 5, each of 2 samples now') in log_of(tmp_path / 'resumed')
    assert load(tmp_path / 'resumed' / 'iter_5.pth')['meta']['data_shape'] == dict(batch_size=2, world_size=1,
                                                                                    samples=6)


@pytest.mark.parametrize('flexible', [False, True], ids=['DaViTRunner', 'DaViTFlexibleRunner'])
def test_resume_warns_about_a_changed_schedule_and_optimizer(uninterrupted, tmp_path, flexible):
    """LinearLR ``end`` 4 -> 8 and lr 1e-3 -> 2e-3 in the config of a resume: the checkpoint's schedule and
    optimizer state win (mmengine), and the log names each value. Unchanged: no warning."""
    checkpoint = str(uninterrupted['work_dir'] / f'iter_{SAMPLES}.pth')  # finished: nothing left to train
    changed = toy_run(tmp_path / 'changed', load_from=checkpoint, resume=True, flexible=flexible,
                      param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=8)],
                      optim_wrapper=dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05)))
    build(changed, flexible).train()
    log = log_of(tmp_path / 'changed')
    assert (f'the parameter-scheduler states in {checkpoint} replace the config\'s param_scheduler: '
            "param_scheduler[0] LinearLR end 8 (config) -> 4 (checkpoint); training continues with the "
            "checkpoint's schedule") in log
    assert f"the optimizer state in {checkpoint} replaces the config's settings: lr 0.002 (config) -> 0.001" in log
    build(toy_run(tmp_path / 'same', load_from=checkpoint, resume=True, flexible=flexible), flexible).train()
    assert 'replace' not in log_of(tmp_path / 'same')


def files(folder: Path, pattern: str) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(pattern))


FOLDER_TMPL = dict(type='mmdavit.AtomicCheckpointHook', interval=1, by_epoch=False, max_keep_ckpts=-1,
                   filename_tmpl='ckpts/iter_{}.pth')


def test_flexible_runner_checkpoint_names_with_a_folder(tmp_path):
    """filename_tmpl='ckpts/iter_{}.pth' under DaViTFlexibleRunner (it once wrote the partial file outside the
    folder and failed to rename it)."""
    runner = build(toy_run(tmp_path, flexible=True, by_epoch=False, iterations=2, batch_size=2,
                           default_hooks=dict(checkpoint=FOLDER_TMPL)), flexible=True)
    runner.train()
    assert files(tmp_path, 'iter_*.pth') == ['ckpts/iter_1.pth', 'ckpts/iter_2.pth']
    assert files(tmp_path, '*.partial') == []
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'ckpts/iter_2.pth')


def test_flexible_runner_failed_write_into_a_folder_leaves_no_partial_file(tmp_path, disk_full_at):
    disk_full_at('iter_2')
    runner = build(toy_run(tmp_path, flexible=True, by_epoch=False, iterations=2, batch_size=2,
                           default_hooks=dict(checkpoint=FOLDER_TMPL)), flexible=True)
    with pytest.raises(OSError, match='simulated'):
        runner.train()
    assert files(tmp_path, 'iter_*.pth') == ['ckpts/iter_1.pth'] and files(tmp_path, '.*') == []
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'ckpts/iter_1.pth')


def test_load_from_skip_backbone_under_the_fsdp_strategy(uninterrupted, tmp_path):
    """One process of DaViTFSDPStrategy: neck and head from the checkpoint, the backbone as initialised
    (the uninterrupted run's initial backbone, same seed)."""
    kwargs = toy_run(tmp_path, flexible=True, load_from=str(uninterrupted['work_dir'] / f'iter_{SAMPLES}.pth'),
                     cfg=dict(load_from_skip_backbone=True), custom_hooks=[dict(type='SampleProbe', stop=True)])
    build(kwargs, flexible=True).train()
    loaded = load(tmp_path / 'before_train.pth')['state_dict']
    initial = load(uninterrupted['work_dir'] / 'before_train.pth')['state_dict']
    trained = weights(uninterrupted['work_dir'] / f'iter_{SAMPLES}.pth')
    assert loaded.keys() == trained.keys()
    for key, value in loaded.items():
        expected = initial[key] if key.startswith('backbone.') else trained[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(initial['backbone.stem.conv.weight'], trained['backbone.stem.conv.weight'])


def test_load_from_skip_backbone_is_refused_by_strategies_that_would_ignore_it(uninterrupted, tmp_path):
    kwargs = toy_run(tmp_path, flexible=True, load_from=str(uninterrupted['work_dir'] / f'iter_{SAMPLES}.pth'),
                     cfg=dict(load_from_skip_backbone=True))
    del kwargs['strategy']  # mmengine's SingleDeviceStrategy
    with pytest.raises(ValueError, match='load_from_skip_backbone=True works with DaViTRunner and with '
                       "DaViTFlexibleRunner's DaViTFSDPStrategy, not with SingleDeviceStrategy"):
        build(kwargs, flexible=True).train()


def test_stages_after_the_last_output_are_not_built_and_full_checkpoints_load(log_records):
    """``out_indices=(0, 1, 2)``: stage 3 is not built (DDP would wait for its gradients: tested on 2 ranks in
    test_fsdp_resume.py); a full model's checkpoint loads through mmengine's ``load_state_dict`` (what
    ``load_from`` uses) with one line about the skipped stage, and gives the same first three outputs."""
    full = DaViT(ARCH, window_size=4, drop_path_rate=0.0).eval()
    model = TruncatedToyClassifier().eval()
    assert len(model.backbone.stages) == 3 and not any(k.startswith('backbone.stages.3') for k in model.state_dict())
    checkpoint = {f'backbone.{k}': v for k, v in full.state_dict().items()}
    checkpoint.update({f'head.{k}': v for k, v in model.head.state_dict().items()})
    load_state_dict(model, checkpoint, strict=False, logger='current')
    log = messages(log_records, logging.INFO)
    assert re.search(r"DaViT: \d+ tensors of the checkpoint's stages from 3 on \(backbone\.stages\.3\.[\w.]+, \.\.\.\) "
                     r'not loaded: out_indices=\(0, 1, 2\) ends at stage 2', log)
    assert 'unexpected key' not in log and 'backbone.norm3.weight' in checkpoint
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for ours, theirs in zip(model.backbone(images), full(images)[:3], strict=True):
            assert torch.equal(ours, theirs)
