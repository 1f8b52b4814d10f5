"""configs/classification + mmdavit.models.cls_head + tools/model_converters/davit_cls2mmpretrain.py:
converted timm / official classifier weights give timm's logits, and mmpretrain's test loop scores them."""
import re
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, default_collate
from mmengine.registry import DefaultScope
from PIL import Image

from mmdavit.models.cls_head import DaViTClsHead, convert_classifier_state_dict
from tests.models.reference import perturb_, timm_to_official
from tests.tools.common import REPO, TOOLS, run

CONFIG = REPO / 'configs' / 'classification' / 'davit_t_in1k.py'
# (height, width) of the generated images: both orientations, and sizes that need no rounding.
IMAGE_SIZES = [(300, 400), (400, 300), (260, 260), (248, 372)]
CLASS_FOLDERS = ['n01440764', 'n01443537']


@pytest.fixture(scope='module')
def timm_model() -> torch.nn.Module:
    return perturb_(timm.create_model('davit_tiny', pretrained=False)).eval()


@pytest.fixture(scope='module')
def cfg() -> Config:
    return Config.fromfile(str(CONFIG))


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory) -> Path:
    """``val/<wnid>/<image>.png``: a few smooth random RGB images in class subfolders (labels come later)."""
    root = tmp_path_factory.mktemp('imagenet')
    gen = np.random.default_rng(0)
    for i, (height, width) in enumerate(IMAGE_SIZES):
        coarse = gen.integers(0, 256, (height // 20, width // 20, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        folder = root / 'val' / CLASS_FOLDERS[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f'image_{i}.png')
    return root


def val_images(root: Path) -> List[Path]:
    return sorted((root / 'val').glob('*/*.png'))


def build_classifier(cfg: Config) -> torch.nn.Module:
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg.model).eval()


def preprocess(cfg: Config, model: torch.nn.Module, paths: List[Path]) -> torch.Tensor:
    """The config's test pipeline and the model's data preprocessor: the (N, 3, 224, 224) network input."""
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose(cfg.test_pipeline)
        batch = default_collate([pipeline(dict(img_path=str(p))) for p in paths])
    return model.data_preprocessor(batch, False)['inputs']


@pytest.fixture(scope='module')
def converted(timm_model, tmp_path_factory) -> Path:
    """timm weights -> mmpretrain ImageClassifier checkpoint, through the converter's command line."""
    folder = tmp_path_factory.mktemp('weights')
    torch.save(timm_model.state_dict(), folder / 'davit_tiny_timm.pth')
    result = run([sys.executable, TOOLS / 'model_converters' / 'davit_cls2mmpretrain.py',
                  folder / 'davit_tiny_timm.pth', folder / 'davit_t_in1k.pth'], cwd=folder)
    assert 'timm classifier' in result.stdout and '(1000 classes)' in result.stdout
    return folder / 'davit_t_in1k.pth'


def load_strict(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not missing and not unexpected, (missing, unexpected)


def test_converted_timm_weights_give_timm_logits(cfg, timm_model, converted, imagenet):
    model = build_classifier(cfg)
    load_strict(model, torch.load(converted, weights_only=True)['state_dict'])
    inputs = preprocess(cfg, model, val_images(imagenet))
    with torch.no_grad():
        ours, reference = model(inputs), timm_model(inputs)
    assert ours.shape == (len(IMAGE_SIZES), 1000)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_converted_official_weights_give_timm_logits(cfg, timm_model, imagenet):
    official = timm_to_official(timm_model.state_dict())
    assert 'norms.weight' in official and 'head.weight' in official
    state_dict, src_format = convert_classifier_state_dict(official)
    assert src_format == 'official'
    model = build_classifier(cfg)
    load_strict(model, state_dict)
    inputs = preprocess(cfg, model, val_images(imagenet)[:2])
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), timm_model(inputs), atol=1e-4, rtol=0)


def test_test_pipeline_is_the_official_eval_transform(cfg, timm_model, imagenet):
    # Official timm config: crop_pct 0.9, bicubic, ImageNet mean / std -> resize to 248, centre crop 224.
    transform = timm.data.create_transform(**timm.data.resolve_data_config(
        {'crop_pct': 0.9, 'interpolation': 'bicubic'}, model=timm_model))
    paths = val_images(imagenet)
    expected = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
    torch.testing.assert_close(preprocess(cfg, build_classifier(cfg), paths), expected, atol=1e-5, rtol=0)


def test_mmpretrain_test_loop_reports_accuracy(cfg, timm_model, converted, imagenet):
    # Labels in ImageNet's meta/val.txt: the first two images get timm's predicted class, the others
    # a class timm ranks last, so top-1 must be exactly 50%.
    paths = val_images(imagenet)
    with torch.no_grad():
        logits = timm_model(preprocess(cfg, build_classifier(cfg), paths))
    labels = [int(row.argmax()) if i < 2 else int(row.argmin()) for i, row in enumerate(logits)]
    (imagenet / 'meta').mkdir(exist_ok=True)
    (imagenet / 'meta' / 'val.txt').write_text(''.join(
        f'{p.relative_to(imagenet / "val")} {label}\n' for p, label in zip(paths, labels)))
    loader = 'test_dataloader'
    result = run([sys.executable, TOOLS / 'test.py', CONFIG, converted, '--work-dir', imagenet / 'work',
                  '--cfg-options', f'{loader}.dataset.data_root={imagenet}', f'{loader}.batch_size=2',
                  f'{loader}.num_workers=0', f'{loader}.persistent_workers=False'], cwd=imagenet)
    output = result.stdout + result.stderr
    top1 = re.search(r'accuracy/top1: ([\d.]+)', output)
    assert top1 is not None, output[-2000:]
    assert float(top1.group(1)) == pytest.approx(50.0)


def test_checkpoints_without_the_official_head_are_refused(timm_model):
    state = timm_model.state_dict()
    backbone_only = {k: v for k, v in state.items() if not k.startswith('head.')}
    with pytest.raises(ValueError, match='No DaViT classifier head'):
        convert_classifier_state_dict(backbone_only)
    # mmpretrain's DaViT classifier: per-token norm3, then pooling and a bare Linear.
    mmpretrain_like = {**{f'backbone.{k}': v for k, v in backbone_only.items()},
                       'backbone.norm3.weight': state['head.norm.weight'], 'head.fc.weight': state['head.fc.weight']}
    with pytest.raises(ValueError, match='per-token output norms \\(norm3.weight\\)'):
        convert_classifier_state_dict(mmpretrain_like)


def test_head_names_a_channel_mismatch():
    with DefaultScope.overwrite_default_scope('mmpretrain'), pytest.raises(ValueError, match='set head.in_channels=1024'):
        DaViTClsHead(in_channels=768)((torch.rand(1, 1024, 7, 7), ))
