"""Tiny synthetic datasets and config overrides that turn the demo configs into seconds-long runs."""
from pathlib import Path

from mmdavit.datasets.synthetic import make_ade_semantic, make_coco_instances

IMAGE_SIZE = (128, 160)


def make_tiny_data(root: Path) -> dict:
    make_coco_instances(root / 'coco', num_train=4, num_val=2, image_size=IMAGE_SIZE, seed=3)
    make_ade_semantic(root / 'ade', num_train=4, num_val=2, image_size=IMAGE_SIZE, seed=3)
    return dict(coco=f'{root}/coco/', ade=f'{root}/ade')


def detection_overrides(data_root: str) -> str:
    """Python source of a config body: two training iterations, validation on two images."""
    return f'''
data_root = {data_root!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1), visualization=dict(draw=False))
'''


def segmentation_overrides(data_root: str) -> str:
    return f'''
data_root = {data_root!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)]
default_hooks = dict(checkpoint=dict(interval=2), logger=dict(interval=1), visualization=dict(draw=False))
'''
