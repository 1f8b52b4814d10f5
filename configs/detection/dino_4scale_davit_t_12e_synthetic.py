# DINO 4-scale DaViT-T on the synthetic COCO-format shapes that `make demo` generates
# (tools/generate_synthetic_data.py), for tests and CPU trials. Same architecture and optimizer as
# dino_4scale_davit_t_12e.py (gradient clip, backbone lr_mult 0.1); the data, image scale, schedule, classes and
# query counts change (100 matching queries and 20 denoising ones for at most 6 objects an image, instead of
# 900 and 100), and no pretrained weights (none being offline).
_base_ = ['./dino_4scale_davit_t_12e.py', '../_base_/datasets/synthetic_coco_instance.py']

data_root = _base_.synthetic_data_root  # the paper's helper, kept true to what the datasets read
image_scale = (160, 128)  # (w, h) of the generated images (make demo: --size 128 160)

model = dict(
    num_queries=100,
    backbone=dict(init_cfg=None),
    bbox_head=dict(num_classes=4),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=20)),
    test_cfg=dict(max_per_img=100))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(_base_.synthetic_train_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(_base_.synthetic_val_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = _base_.synthetic_val_evaluator
test_evaluator = val_evaluator

# A short schedule from scratch: a higher AdamW lr than fine-tuning uses, warmup, one decay step.
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=6)
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[11], gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
    visualization=dict(draw=True, interval=5))
