# Mask2Former (instance) DaViT-T on the synthetic COCO-format shapes that `make demo` generates
# (tools/generate_synthetic_data.py), for tests and CPU trials. Same model and optimizer as
# mask2former_davit_t_lsj_50e_coco.py (backbone lr_mult 0.1, DaViT norms and embeddings without weight decay)
# and its large-scale jitter, at the generated image size and with a milder range (0.5-2x instead of 0.1-2x:
# a 13x16 crop of a 128x160 image keeps no learnable object). The data, classes (4 + the "no object" class
# weight), schedule and evaluation interval change, and no pretrained weights (none being offline).
_base_ = ['./mask2former_davit_t_lsj_50e_coco.py', '../_base_/datasets/synthetic_coco_instance.py']

data_root = _base_.synthetic_data_root  # the paper's helper, kept true to what the datasets read
image_size = (128, 160)  # (h, w) of the generated images (make demo: --size 128 160)
num_classes = 4

model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchFixedSizePad', size=image_size, img_pad_value=0, pad_mask=True, mask_pad_value=0,
             pad_seg=False)
    ]),
    backbone=dict(init_cfg=None),
    panoptic_head=dict(
        num_things_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_classes),
    test_cfg=dict(max_per_image=20))

train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomResize', scale=image_size[::-1], ratio_range=(0.5, 2.0), resize_type='Resize', keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size[::-1], crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True),
    dict(type='Resize', scale=image_size[::-1], keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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

# A short schedule from scratch, in iterations as the zoo's: a higher AdamW lr than fine-tuning uses, warmup,
# one decay step.
max_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=150)
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[250], gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1),
    visualization=dict(draw=True, interval=10))
