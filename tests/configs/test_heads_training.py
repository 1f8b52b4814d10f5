"""The synthetic twins of the Cascade Mask R-CNN, DINO and Mask2Former configs train from scratch on generated
data: the loss falls over four iterations on four images, every part of the DaViT backbone gets a gradient at
each step and moves (``BackboneProbe``: a falling loss alone would not show it, heads' biases learn without
features), and the evaluation runs (COCO bbox / segm, mIoU: four iterations from scratch score about 0, so
only that it ran and gave a score is checked). Mask2Former on ADE runs through `mim train` with an
`mmdavit::` base from a folder outside the repository."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

import mmdavit  # noqa: F401
from mmdavit.registry import RUNNERS
from tests.commands import run as run_checked
from tests.configs import backbone_probe
from tests.configs.backbone_probe import assert_backbone_learned
from tests.configs.tiny_runs import make_tiny_data

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
BIN = Path(sys.executable).parent


def overrides(data_root: str, iterations: int, by_epoch: bool) -> str:
    """Config body: 4 training images in batches of 2, a constant lr, evaluation at the end, fixed seed."""
    if by_epoch:
        schedule = f'train_cfg = dict(max_epochs={iterations // 2}, val_interval={iterations // 2})'
        checkpoint = f'checkpoint=dict(interval={iterations // 2})'
    else:
        schedule = f'train_cfg = dict(max_iters={iterations}, val_interval={iterations})'
        checkpoint = f'checkpoint=dict(by_epoch=False, interval={iterations})'
    loader = 'num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)'
    evaluator = ("val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')\n"
                 'test_evaluator = val_evaluator\n' if 'coco' in data_root else '')
    return f'''
data_root = {data_root!r}
randomness = dict(seed=0)
train_dataloader = dict(batch_size=2, {loader})
val_dataloader = dict(batch_size=1, {loader})
test_dataloader = val_dataloader
{evaluator}{schedule}
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=1)]
default_hooks = dict({checkpoint}, logger=dict(interval=1), visualization=dict(draw=False))
'''


def scalars(work_dir: Path) -> list:
    return [json.loads(line) for line in next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()]


def assert_loss_falls(records: list, iterations: int) -> None:
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == iterations and all(loss == loss for loss in losses)  # logged every step, no NaN
    # the first two steps see all four images once, so do the last two (seeded: the same numbers every run)
    assert sum(losses[-2:]) < sum(losses[:2]), losses


def narrow(cfg: Config) -> None:
    """Test-sized heads (the suite's time budget): narrower cascade heads, fewer transformer layers."""
    model = cfg.model
    if model.type == 'CascadeRCNN':
        for head in model.roi_head.bbox_head:
            head.update(conv_out_channels=32, fc_out_channels=128)
        model.roi_head.mask_head.conv_out_channels = 32
    elif model.type == 'DINO':
        model.encoder.num_layers = model.decoder.num_layers = 2
    else:  # Mask2Former
        model.panoptic_head.pixel_decoder.encoder.num_layers = 2
        model.panoptic_head.transformer_decoder.num_layers = 3


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp('heads_data'))


@pytest.mark.slow
@pytest.mark.parametrize('name,iterations,by_epoch,metrics', [
    ('detection/cascade_maskrcnn_davit_t_3x_synthetic', 4, True, ('coco/bbox_mAP', 'coco/segm_mAP')),
    ('detection/dino_4scale_davit_t_12e_synthetic', 4, True, ('coco/bbox_mAP', )),
    ('detection/mask2former_davit_t_lsj_50e_coco_synthetic', 4, False, ('coco/bbox_mAP', 'coco/segm_mAP')),
])
def test_synthetic_twin_trains_and_evaluates(tmp_path, monkeypatch, data, name, iterations, by_epoch, metrics):
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(str(CONFIGS / f'{name}.py'))
    extra = tmp_path / 'overrides.py'
    extra.write_text(overrides(data['coco'], iterations, by_epoch))
    cfg.merge_from_dict(Config.fromfile(str(extra)).to_dict())
    cfg.work_dir = str(tmp_path / 'work')
    cfg.visualizer.name = f'visualizer_{tmp_path.name}'  # mmdet's 'visualizer' instance would outlive the test
    narrow(cfg)
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='BackboneProbe')]
    RUNNERS.build(cfg).train()
    records = scalars(tmp_path / 'work')
    assert_loss_falls(records, iterations)
    assert_backbone_learned(tmp_path / 'work', steps=iterations)
    # Evaluation ran and scored (not a sign of learning: four steps from scratch score about 0).
    evaluation = [r for r in records if metrics[0] in r]
    assert len(evaluation) == 1 and all(0 <= evaluation[0][m] <= 1 for m in metrics)


@pytest.mark.slow
def test_mask2former_ade_synthetic_through_mim_from_elsewhere(tmp_path, data):
    iterations = 4
    # The probe hook from a copy beside the config: the repository stays off the training process's path.
    probes = tmp_path / 'probe'
    probes.mkdir()
    shutil.copy(backbone_probe.__file__, probes / 'backbone_probe.py')
    config = tmp_path / 'my_mask2former.py'
    config.write_text("_base_ = 'mmdavit::segmentation/mask2former_davit_t_160k_ade20k_synthetic.py'\n"
                      + overrides(data['ade'], iterations, by_epoch=False)
                      + "custom_imports = dict(imports=['mmdavit', 'backbone_probe'], allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='BackboneProbe')]\n")
    path = os.pathsep.join(filter(None, [str(probes), os.environ.get('PYTHONPATH')]))
    run_checked([str(BIN / 'mim'), 'train', 'mmseg', str(config), '--work-dir', 'work'], tmp_path,
                env=dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=path), timeout=600)
    assert (tmp_path / 'work' / f'iter_{iterations}.pth').is_file()
    records = scalars(tmp_path / 'work')
    assert_loss_falls(records, iterations)
    assert_backbone_learned(tmp_path / 'work', steps=iterations)
    # Evaluation ran and scored (not a sign of learning: four steps from scratch score about 0).
    evaluation = [r for r in records if 'mIoU' in r]
    assert len(evaluation) == 1 and 0 <= evaluation[0]['mIoU'] <= 100
