# Cascade Mask R-CNN DaViT-T on the synthetic COCO-format shapes that `make demo` generates
# (tools/generate_synthetic_data.py), for tests and CPU trials. Same model and layer-decay optimizer as
# cascade_maskrcnn_davit_t_3x.py; the data, image scale, schedule, sampling sizes and the heads' norm (BN
# instead of SyncBN, so single-process and CPU-distributed runs share the config) change, no pretrained weights
# (none being offline), and float32 instead of AMP (CPU bfloat16 autocast ran 2.4x slower per step here).
_base_ = ['./cascade_maskrcnn_davit_t_3x.py', '../_base_/datasets/synthetic_coco_instance.py']

data_root = _base_.synthetic_data_root  # the paper's helper, kept true to what the datasets read
image_scale = (160, 128)  # (w, h) of the generated images (make demo: --size 128 160)
norm_cfg = dict(type='BN', requires_grad=True)

# The three cascade stages keep their box coders and GIoU losses; only the classes and the norm change.
bbox_heads = [dict(head, num_classes=4, norm_cfg=norm_cfg) for head in _base_.model.roi_head.bbox_head]
# CPU-sized sampling: at most 6 objects per image need far fewer proposals and RoIs than COCO (the 4conv1fc
# heads' cost grows with the number of RoIs, three stages over).
model = dict(
    backbone=dict(init_cfg=None),
    roi_head=dict(bbox_head=bbox_heads, mask_head=dict(num_classes=4)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=100),
        rcnn=[dict(stage, sampler=dict(stage.sampler, num=16)) for stage in _base_.model.train_cfg.rcnn]),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=50), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
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

# A short schedule from scratch: a higher AdamW lr than fine-tuning uses, warmup, one decay step.
max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=3)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[5], gamma=0.1),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
    visualization=dict(draw=True, interval=5))
