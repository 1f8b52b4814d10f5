"""tools/infer.py with the checkpoints users have: a ``.safetensors`` file (no ``meta``, so no class names), a
training run's ``.pth`` (its dataset's names in ``meta``), an ``hf-hub://`` name; configs by ``mmdavit::`` name.
And what mmengine's runner (``mim test``) and a bare DetInferencer make of the same ``.safetensors`` file.

Narrow DaViTs (widths 16-128, one block a stage) in the synthetic demo configs: the class names, not the
predictions, are under test.
"""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from safetensors.torch import save_file

from tests.models.test_hub import add_to_hub_cache
from tests.tools.common import DET_CONFIG, SEG_CONFIG, TOOLS, load_tool

SHAPES = ('circle', 'square', 'triangle', 'star')  # the synthetic configs' metainfo
NARROW = "arch=dict(_delete_=True, embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))"
NARROW_DET = f'''_base_ = {str(DET_CONFIG)!r}
model = dict(backbone=dict({NARROW}), neck=dict(in_channels=[16, 32, 64, 128]))
'''
NARROW_SEG = f'''_base_ = {str(SEG_CONFIG)!r}
model = dict(backbone=dict({NARROW}), decode_head=dict(in_channels=[16, 32, 64, 128], channels=16),
             auxiliary_head=dict(in_channels=64, channels=16))
'''
# What a training run of another dataset would have written into the checkpoint's meta.
CHECKPOINT_META = dict(classes=('w', 'x', 'y', 'z'), palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)])


@pytest.fixture(scope='module')
def infer():
    return load_tool('infer.py')


def write_checkpoints(tmp: Path, scope: str, body: str) -> dict:
    """The narrow model's config and its random weights as .safetensors (bare tensors) and as .pth with a
    training run's meta."""
    config = tmp / f'narrow_{scope}.py'
    config.write_text(body)
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    state = {k: v.contiguous() for k, v in registry.build(Config.fromfile(str(config)).model).state_dict().items()}
    save_file(state, str(tmp / f'{scope}.safetensors'))
    torch.save({'state_dict': state, 'meta': {'dataset_meta': CHECKPOINT_META}}, tmp / f'{scope}.pth')
    return dict(config=config, safetensors=tmp / f'{scope}.safetensors', pth=tmp / f'{scope}.pth')


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp('det'), 'mmdet', NARROW_DET)


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp('seg'), 'mmseg', NARROW_SEG)


def test_detector_safetensors_draws_the_configs_classes(infer, det):
    """mmdet labels a checkpoint without meta with COCO's names ("person" for a circle)."""
    inferencer = infer.detection_inferencer(Config.fromfile(str(det['config'])), str(det['safetensors']), 'cpu')
    assert tuple(inferencer.visualizer.dataset_meta['classes']) == SHAPES  # what the pictures are labelled with
    assert tuple(inferencer.model.dataset_meta['classes']) == SHAPES
    assert inferencer.classes_source == 'the config (the checkpoint names no classes)'


def test_detector_pth_keeps_the_checkpoints_classes(infer, det):
    inferencer = infer.detection_inferencer(Config.fromfile(str(det['config'])), str(det['pth']), 'cpu')
    assert tuple(inferencer.visualizer.dataset_meta['classes']) == CHECKPOINT_META['classes']
    assert inferencer.classes_source == 'the checkpoint'


@pytest.mark.parametrize('kind,classes,palette', [
    ('safetensors', SHAPES, [[230, 30, 30], [30, 190, 50], [40, 70, 230], [240, 210, 20]]),
    ('pth', CHECKPOINT_META['classes'], CHECKPOINT_META['palette']),
])
def test_segmentor_draws_the_checkpoints_or_else_the_configs_classes(infer, seg, kind, classes, palette):
    """MMSegInferencer gives its visualizer Cityscapes' names and colours ("road", "sidewalk") whatever the
    checkpoint says, unless told otherwise."""
    inferencer = infer.segmentation_inferencer(Config.fromfile(str(seg['config'])), str(seg[kind]), 'cpu')
    meta = inferencer.visualizer.dataset_meta
    assert tuple(meta['classes']) == tuple(classes)
    assert [list(colour) for colour in meta['palette']] == [list(colour) for colour in palette]


def test_config_by_mmdavit_name(infer):
    cfg = infer.read_config('mmdavit::detection/maskrcnn_davit_t_synthetic.py')
    assert cfg.model.backbone.type == 'mmdavit.DaViT' and tuple(cfg.test_dataloader.dataset.metainfo.classes) == SHAPES


def test_bare_det_inferencer_and_the_runner_with_the_same_safetensors(det, tmp_path):
    """What tools/infer.py corrects, checked where it does not run: mmdet's DetInferencer used directly falls
    back to COCO's names with a warning (documented, not ours to change); mmengine's runner (``mim test``,
    tools/test.py) draws and evaluates with the test dataset's names, whatever the checkpoint holds."""
    from mmdet.apis import DetInferencer
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(det['config']))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        bare = DetInferencer(model=cfg, weights=str(det['safetensors']), device='cpu', show_progress=False)
    assert bare.visualizer.dataset_meta['classes'][0] == 'person'
    assert any('use COCO classes by default' in str(w.message) for w in caught)

    from mmdavit.datasets.synthetic import make_coco_instances
    make_coco_instances(tmp_path / 'coco', num_train=1, num_val=1, image_size=(128, 160), seed=3)
    cfg.test_dataloader.dataset.data_root = f'{tmp_path}/coco/'
    cfg.test_dataloader.num_workers, cfg.test_dataloader.persistent_workers = 0, False
    cfg.test_evaluator.ann_file = f'{tmp_path}/coco/annotations/instances_val2017.json'
    cfg.visualizer.name = f'runner-{tmp_path.name}'  # its own instance: mmengine keeps visualizers by name
    cfg.update(work_dir=str(tmp_path / 'work'), load_from=str(det['safetensors']))
    runner = Runner.from_cfg(cfg)
    runner.test()
    assert tuple(runner.visualizer.dataset_meta['classes']) == SHAPES


def test_infer_takes_an_hf_hub_name(det, tmp_path):
    """An hf-hub:// name, offline, from the Hugging Face cache (laid out by the test), for a .safetensors
    detector: the picture is drawn and labelled with the config's names. The config goes by mmdavit:: name's
    file here, the checkpoint by name, as `mim test --checkpoint hf-hub://...` takes it."""
    hf_home = tmp_path / 'hf_home'
    add_to_hub_cache(hf_home, 'someone/narrow-detector', {'model.safetensors': det['safetensors']})
    image = tmp_path / 'shapes.png'
    canvas = np.zeros((128, 160, 3), np.uint8)
    cv2.circle(canvas, (60, 60), 30, (30, 30, 230), -1)
    cv2.imwrite(str(image), canvas)
    env = {k: v for k, v in os.environ.items() if k not in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_TOKEN')}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', PYTHONWARNINGS='ignore')
    result = subprocess.run([sys.executable, str(TOOLS / 'infer.py'), str(det['config']),
                             'hf-hub://someone/narrow-detector', str(image), '--out-dir', str(tmp_path / 'out'),
                             '--score-thr', '0', '--device', 'cpu'],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f'{image} -> {tmp_path / "out" / "vis" / image.name}' in result.stdout, output[-3000:]
    assert ('classes from the config (the checkpoint names no classes): circle, square, triangle, star'
            in result.stdout), output[-3000:]
    assert 'COCO classes' not in output



def test_infer_says_why_an_hf_hub_name_cannot_be_loaded(infer, monkeypatch):
    """The resolver's message (tests/models/test_hub.py checks its wording) as the one error line."""
    import mmdavit.models.hub as hub

    def not_cached(name):
        raise FileNotFoundError(f'{name}: model.safetensors of someone/x at revision dev is not in the cache')

    monkeypatch.setattr(hub, 'resolve_hf_hub', not_cached)
    with pytest.raises(SystemExit) as info:
        infer.local_checkpoint('hf-hub://someone/x@dev')
    assert str(info.value) == ('error: hf-hub://someone/x@dev: model.safetensors of someone/x at revision dev is '
                               'not in the cache')
