"""Shared fixtures of the deployment tests: synthetic COCO / ADE data, narrow-DaViT twins of the shipped
configs, and checkpoints of those twins trained for a few iterations (so that predictions are neither empty
nor the untrained heads' constants).

``trained(family)`` trains once per test session and family; families are the keys of ``FAMILIES``. H20b / H20c
add theirs (segmentation, DINO, Mask2Former) here or in their own test files.
"""
import importlib
import textwrap
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch
from mmengine.config import Config

from mmdavit.datasets.synthetic import make_ade_semantic, make_coco_instances

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = (128, 160)  # (h, w) of the generated images, as the synthetic configs' (w, h) = (160, 128)
OTHER_ASPECT = (160, 100)  # (h, w) of a portrait image verified besides them

# One layer per stage, dims 32..256: the same code paths as DaViT-T at a fraction of the compute.
NARROW_BACKBONE = 'dict(_delete_=True, embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))'

COCO_DATA = '''
data_root = {root!r}
metainfo = dict(classes=('circle', 'square', 'triangle', 'star'),
                palette=[(230, 30, 30), (30, 190, 50), (40, 70, 230), (240, 210, 20)])
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
'''

# config body per family: the shipped config it inherits, then the narrow model
FAMILIES: Dict[str, dict] = {
    'retinanet': dict(base='configs/detection/retinanet_davit_t.py', model=f'''
model = dict(
    backbone=dict(arch={NARROW_BACKBONE}, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256], out_channels=32),
    bbox_head=dict(num_classes=4, in_channels=32, feat_channels=32))
'''),
    'maskrcnn': dict(base='configs/detection/maskrcnn_davit_t_synthetic.py', model=f'''
model = dict(
    backbone=dict(arch={NARROW_BACKBONE}, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=2, in_channels=32, conv_out_channels=32)))
'''),
    'cascade': dict(base='configs/detection/cascade_maskrcnn_davit_t_3x_synthetic.py', model=f'''
model = dict(
    backbone=dict(arch={NARROW_BACKBONE}, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=[dict(head, in_channels=32, conv_out_channels=32, fc_out_channels=64)
                   for head in _base_.model.roi_head.bbox_head],
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=2, in_channels=32, conv_out_channels=32)))
'''),
}
TRAIN_ITERATIONS = 8
LEARNING_RATE = 1e-3


@pytest.fixture(scope='session')
def coco_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp('deploy_coco')
    make_coco_instances(root, num_train=4, num_val=2, image_size=IMAGE_SIZE, seed=3)
    return f'{root}/'


@pytest.fixture(scope='session')
def ade_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp('deploy_ade')
    make_ade_semantic(root, num_train=4, num_val=2, image_size=IMAGE_SIZE, seed=3)
    return f'{root}/'


def write_config(folder: Path, family: str, data_root: str) -> Path:
    spec = FAMILIES[family]
    path = folder / f'{family}_narrow.py'
    body = f"_base_ = {str(ROOT / spec['base'])!r}\n" + COCO_DATA.format(root=data_root) + spec['model']
    path.write_text(textwrap.dedent(body))
    return path


def train_briefly(config: Path, out: Path, iterations: int = TRAIN_ITERATIONS, scope: str = 'mmdet') -> Path:
    """A few AdamW steps on the synthetic training images (no Runner: seconds), saved as an mmengine-style
    checkpoint with the dataset's classes and palette. ``scope``: 'mmdet' for detectors, 'mmseg' for
    segmentors (whose registries build the model and dataset)."""
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import OptimWrapper
    from mmengine.registry import init_default_scope
    from mmengine.runner import set_random_seed

    import mmdavit  # noqa: F401
    registry = importlib.import_module(f'{scope}.registry')
    cfg = Config.fromfile(config)
    init_default_scope(scope)
    set_random_seed(0)  # torch, numpy and random: the pipelines' random crops and flips draw from the latter
    model = registry.MODELS.build(cfg.model)
    model.init_weights()
    dataset = registry.DATASETS.build(cfg.train_dataloader.dataset)
    optim_wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.05))
    model.train()
    for step in range(iterations):
        batch = pseudo_collate([dataset[(2 * step + j) % len(dataset)] for j in range(2)])
        model.train_step(batch, optim_wrapper)
    meta = dict(dataset_meta=dict(classes=list(dataset.metainfo['classes']),
                                  palette=[list(c) for c in dataset.metainfo['palette']]))
    torch.save(dict(state_dict=model.state_dict(), meta=meta), out)
    return out


def verification_images(cfg: Config, folder: Path) -> List[str]:
    """The config's validation images and a portrait copy of the first (160 x 100: resized to fit the export's
    frame it leaves padding on the right, so that the graph's ``image_shapes`` input is exercised)."""
    import cv2

    from mmdavit.deploy.export import val_images
    paths = val_images(cfg)
    portrait = folder / 'portrait.png'
    cv2.imwrite(str(portrait), cv2.resize(cv2.imread(paths[0]), OTHER_ASPECT[::-1], interpolation=cv2.INTER_AREA))
    return paths + [str(portrait)]


@pytest.fixture(scope='session')
def trained(tmp_path_factory, coco_data) -> Callable[[str], tuple]:
    """``trained(family) -> (config path, checkpoint path)``, trained once per session."""
    cache = {}

    def get(family: str) -> tuple:
        if family not in cache:
            folder = tmp_path_factory.mktemp(f'deploy_{family}')
            config = write_config(folder, family, coco_data)
            cache[family] = (config, train_briefly(config, folder / 'model.pth'))
        return cache[family]

    return get
