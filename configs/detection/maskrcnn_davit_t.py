# Mask R-CNN + FPN with DaViT-T on COCO, 1x schedule: the official DaViT recipe
# (paper: box AP 45.0 / mask AP 41.1; 47.8M params, 263 GFLOPs at 1280x800). 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmdavit'], allow_failed_imports=False)
runner_type = 'mmdavit.DaViTRunner'  # mmengine's Runner + dataset-preparation hints on missing data
# mmengine's CheckpointHook in a crash-safe order: new checkpoint, then last_checkpoint, then delete old ones
default_hooks = dict(checkpoint=dict(type='mmdavit.AtomicCheckpointHook'))

# The official ImageNet-1k weights by name (timm's hub copy, cached by huggingface_hub); a local file in any
# format works too (--cfg-options model.backbone.init_cfg.checkpoint=PATH): docs/checkpoint-formats.md.
pretrained = 'hf-hub://timm/davit_tiny.msft_in1k'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdavit.DaViT',
        arch='tiny',
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# DETR-style multi-scale training: short side 480-800 (step 32), or resize -> random crop -> resize.
multi_scales = [(short, 1333) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

# AdamW 1e-4, weight decay 0.05 on every parameter (as the official configs); mmdet's 500-iter warmup.
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
