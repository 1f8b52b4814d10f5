# The demo: Mask R-CNN DaViT-T on the synthetic COCO-format shapes that `make demo` generates
# (tools/generate_synthetic_data.py). Same model and optimizer as the paper config; only the data, image
# scale, schedule and evaluation interval change (and no pretrained weights, none being offline).
_base_ = ['./maskrcnn_davit_t.py', '../_base_/datasets/synthetic_coco_instance.py']

data_root = _base_.synthetic_data_root  # the paper's helper, kept true to what the datasets read
image_scale = (160, 128)  # (w, h) of the generated images (make demo: --size 128 160)

# CPU-sized heads (profiled on one thread: with mmdet's defaults the 4-conv mask head took 28% of an
# iteration, RPN, RoI Align and the box head ~27%): at most 6 objects per image need far fewer proposals
# and sampled RoIs than COCO, and a 2-conv, 128-channel mask head is plenty for four flat-coloured shapes
# (mask size stays 28x28).
model = dict(
    backbone=dict(init_cfg=None),
    roi_head=dict(
        bbox_head=dict(num_classes=4),
        mask_head=dict(num_classes=4, num_convs=2, conv_out_channels=128)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=32))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100), rcnn=dict(max_per_img=20)))

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
# Loading a batch of these small PNGs takes ~15 ms: worker processes would only compete with training
# for the two cores.
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_base_.synthetic_train_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_base_.synthetic_val_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = _base_.synthetic_val_evaluator
test_evaluator = val_evaluator

# A short schedule from scratch: a higher AdamW lr than fine-tuning uses, warmup, one decay step for the
# last epoch. fused=True: torch's one-kernel AdamW step, 4x faster than the per-parameter loop on CPU.
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=4e-4, fused=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[2], gamma=0.1),
]
# Pictures of predictions drawn on the image enlarged 3x (mmdavit/visualization.py): at the demo's
# 160x128 the labels cannot be read.
visualizer = dict(type='mmdavit.EnlargedDetLocalVisualizer', scale=3)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
    visualization=dict(draw=True, interval=5))
