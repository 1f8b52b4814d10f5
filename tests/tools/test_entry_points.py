"""tools/train.py, test.py, infer.py and dist_train.sh, run as users run them: subprocesses, on a tiny
synthetic COCO set, from a working directory outside the repository."""
import json
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from tests.tools.common import DET_CONFIG, REPO, SEG_CONFIG, TOOLS, coco_options, load_tool, make_synthetic_coco, run

# One epoch of 4 images in batches of 2 = two iterations; no validation during training (val_begin=2).
SHORT_SCHEDULE = ['train_cfg.max_epochs=1', 'train_cfg.val_begin=2', 'train_dataloader.batch_size=2',
                  'randomness.seed=0']


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp('synthetic'))


@pytest.fixture(scope='module')
def trained(coco_root, tmp_path_factory) -> Tuple[Path, str]:
    """A two-iteration training run of the synthetic Mask R-CNN config: (work_dir, console output)."""
    work_dir = tmp_path_factory.mktemp('train')
    result = run([sys.executable, TOOLS / 'train.py', DET_CONFIG, '--work-dir', work_dir, '--cfg-options',
                  *SHORT_SCHEDULE, *coco_options(coco_root)], cwd=work_dir)
    return work_dir, result.stdout + result.stderr


def test_package_comes_from_default_scope():
    train = load_tool('train.py')
    assert train.package_of(Config.fromfile(str(DET_CONFIG)), 'det') == 'mmdet'
    assert train.package_of(Config.fromfile(str(SEG_CONFIG)), 'seg') == 'mmseg'
    assert train.upstream_script_path('mmseg', 'test').parts[-4:] == ('mmseg', '.mim', 'tools', 'test.py')
    with pytest.raises(SystemExit, match='default_scope=None'):
        train.package_of(Config(dict(model=dict())), 'bare.py')


def test_resume_path_becomes_load_from_for_mmseg():
    train = load_tool('train.py')
    argv = ['cfg.py', '--resume', 'w/iter_10.pth', '--amp']
    assert train.resume_with_path_for_mmseg(argv, 'w/iter_10.pth') == [
        'cfg.py', '--resume', '--amp', '--cfg-options', 'load_from=w/iter_10.pth']
    assert train.resume_with_path_for_mmseg(['cfg.py', '--resume=x.pth'], 'x.pth') == [
        'cfg.py', '--resume', '--cfg-options', 'load_from=x.pth']
    assert train.resume_with_path_for_mmseg(['cfg.py', '--resume'], 'auto') == ['cfg.py', '--resume']


def test_config_may_follow_resume():
    train = load_tool('train.py')
    # mmseg's --resume takes no value, so its users write the flag first; a .py is never a checkpoint.
    assert train.config_first(['--resume', 'cfg.py', '--amp']) == ['cfg.py', '--resume', '--amp']
    assert train.config_first(['--work-dir', 'w', '--resume', 'cfg.py']) == ['cfg.py', '--work-dir', 'w', '--resume']
    assert train.config_first(['cfg.py', '--resume', 'w/iter_10.pth']) == ['cfg.py', '--resume', 'w/iter_10.pth']
    assert train.config_first(['cfg.py', '--resume']) == ['cfg.py', '--resume']


def test_train_accepts_resume_before_the_config(tmp_path):
    # Reaches DaViTRunner (its missing-dataset error is the tell) instead of "arguments are required: config".
    result = subprocess.run(
        [sys.executable, str(TOOLS / 'train.py'), '--resume', str(SEG_CONFIG), '--work-dir', str(tmp_path),
         '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path / "no_such_data"}'],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert 'Dataset not found' in result.stderr, result.stderr[-2000:]


def test_train_runs_two_iterations_and_saves_a_checkpoint(trained):
    work_dir, output = trained
    assert 'Epoch(train) [1][2/2]' in output
    assert (work_dir / 'epoch_1.pth').is_file()
    dumped = Config.fromfile(str(work_dir / DET_CONFIG.name))
    assert dumped.default_scope == 'mmdet' and dumped.runner_type == 'mmdavit.DaViTRunner'


def test_test_evaluates_the_checkpoint_with_mmdet_outputs(trained, coco_root, tmp_path):
    work_dir, _ = trained
    predictions = tmp_path / 'predictions.pkl'
    result = run([sys.executable, TOOLS / 'test.py', DET_CONFIG, work_dir / 'epoch_1.pth', '--work-dir', tmp_path,
                  '--out', predictions, '--show-dir', 'pictures', '--cfg-options', *coco_options(coco_root)],
                 cwd=tmp_path)
    output = result.stdout + result.stderr
    assert re.search(r'Epoch\(test\).*coco/bbox_mAP: -?[\d.]+.*coco/segm_mAP: -?[\d.]+', output), output[-2000:]
    # mmdet's own test.py ran: its DumpDetResults pickle (mmseg would want a folder) and its show-dir hook.
    with open(predictions, 'rb') as f:
        assert len(pickle.load(f)) == 2
    pictures = list(tmp_path.glob('*/pictures/*.png'))
    assert len(pictures) == 2
    # Drawn on the 160x128 image enlarged (the demo config's visualizer), so that labels can be read.
    assert all(min(cv2.imread(str(picture)).shape[:2]) >= 384 for picture in pictures)
    metrics = json.loads(next(tmp_path.glob('*/*.json')).read_text().splitlines()[-1])
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics


def test_mmseg_test_honours_runner_type(tmp_path):
    # mmseg's test.py builds mmengine's Runner directly; ours must still build DaViTRunner, whose
    # missing-dataset error is the tell. Fails before any checkpoint is read.
    missing = tmp_path / 'no_such_data'
    result = subprocess.run(
        [sys.executable, str(TOOLS / 'test.py'), str(SEG_CONFIG), str(tmp_path / 'none.pth'), '--work-dir',
         str(tmp_path), '--cfg-options', f'test_dataloader.dataset.data_root={missing}'],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert 'Dataset not found' in result.stderr and 'make demo' in result.stderr, result.stderr[-2000:]


def test_infer_writes_a_picture(trained, coco_root, tmp_path):
    work_dir, _ = trained
    image = coco_root / 'val2017' / '000000000001.png'
    result = run([sys.executable, TOOLS / 'infer.py', DET_CONFIG, work_dir / 'epoch_1.pth', image,
                  '--out-dir', tmp_path / 'out', '--score-thr', '0'], cwd=tmp_path)
    picture = tmp_path / 'out' / 'vis' / image.name
    assert f'{image} -> {picture}' in result.stdout
    # The demo config's visualizer draws on the image enlarged 3x, so that labels can be read.
    drawn, original = cv2.imread(str(picture)), cv2.imread(str(image))
    enlarged = cv2.resize(original, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR)
    assert drawn is not None and drawn.shape == enlarged.shape
    assert (drawn != enlarged).any(), 'no prediction drawn at --score-thr 0'
    assert 'LocalVisBackend' not in result.stdout + result.stderr


def test_infer_names_unreadable_images_before_loading_the_model(coco_root, tmp_path):
    good = coco_root / 'val2017' / '000000000001.png'
    truncated, text = tmp_path / 'truncated.png', tmp_path / 'notes.jpg'
    truncated.write_bytes(good.read_bytes()[:40])
    text.write_text('not an image')
    unused = tmp_path / 'unused.pth'  # never read: the inputs are checked first
    unused.write_bytes(b'')
    result = subprocess.run([sys.executable, str(TOOLS / 'infer.py'), str(DET_CONFIG), str(unused), str(good),
                             str(truncated), str(text), '--out-dir', str(tmp_path / 'out')],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith('error: not readable as images')
    assert str(truncated) in error and str(text) in error and str(good) not in error


def test_infer_goes_on_after_an_image_it_cannot_draw(tmp_path):
    # A randomly initialised segmentation model (the drawing, not the weights, is under test) with mmseg's own
    # visualizer (the demo config's enlarged one would draw a 1x1 image 3x3); a 1x1 image, which mmseg's
    # visualizer fails on, first, a normal one after it.
    from mmseg.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    cfg = Config.fromfile(str(SEG_CONFIG))
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, tmp_path / 'random.pth')
    config = tmp_path / 'plain_visualizer.py'
    config.write_text(f"_base_ = {str(SEG_CONFIG)!r}\nvisualizer = dict(_delete_=True, type='SegLocalVisualizer', "
                      "vis_backends=[dict(type='LocalVisBackend')], name='visualizer')\n")
    tiny, normal = tmp_path / 'tiny.png', tmp_path / 'normal.png'
    cv2.imwrite(str(tiny), np.full((1, 1, 3), 200, np.uint8))
    cv2.imwrite(str(normal), np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    result = subprocess.run([sys.executable, str(TOOLS / 'infer.py'), str(config), str(tmp_path / 'random.pth'),
                             str(tiny), str(normal), '--out-dir', str(tmp_path / 'out')],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert f'{normal} -> {tmp_path / "out" / "vis" / "normal.png"}' in result.stdout, output[-2000:]
    assert cv2.imread(str(tmp_path / 'out' / 'vis' / 'normal.png')).shape == (96, 128, 3)
    assert 'LocalVisBackend' not in output
    assert result.returncode == 1 and 'Traceback' not in result.stderr, output[-2000:]
    assert f"error: {tiny}: ValueError: a single-pixel image, which mmseg's visualizer cannot draw" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                    reason='two processes need two GPUs when CUDA is present (CPU runs use gloo)')
def test_dist_train_two_processes(coco_root, tmp_path):
    env = {**os.environ, 'PYTHON': sys.executable, 'PORT': str(free_port())}
    # 4 images, 2 ranks, batch 1: each rank runs 2 iterations (4 would mean the data was not sharded).
    result = run(['bash', TOOLS / 'dist_train.sh', DET_CONFIG, 2, '--work-dir', tmp_path, '--cfg-options',
                  'train_cfg.max_epochs=1', 'train_cfg.val_begin=2', 'train_dataloader.batch_size=1',
                  *coco_options(coco_root)], cwd=REPO, env=env)
    output = result.stdout + result.stderr
    # torchrun exits 0 only when every rank did.
    assert 'Distributed training: True' in output and 'GPU number: 2' in output
    if not torch.cuda.is_available():
        assert "dist_cfg: {'backend': 'gloo'}" in output
    assert 'Epoch(train) [1][2/2]' in output and 'Epoch(train) [1][4/4]' not in output
    assert (tmp_path / 'epoch_1.pth').is_file()
