# The demo: UperNet DaViT-T on the synthetic ADE-format shapes that `make demo` generates
# (tools/generate_synthetic_data.py). Same backbone and optimizer as the paper config; the data, image
# scale, schedule, evaluation interval and decoder width change (and no pretrained weights offline).
_base_ = ['./upernet_davit_t.py', '../_base_/datasets/synthetic_ade20k.py']

# The paper's helper variables, kept true to what the datasets read.
dataset_type = _base_.synthetic_train_dataset.type
data_root = _base_.synthetic_data_root
crop_size = (128, 160)  # (h, w) of the generated images (make demo: --size 128 160)
# BN instead of SyncBN: the same config runs single-process and distributed on CPU (gloo has no SyncBN).
norm_cfg = dict(type='BN', requires_grad=True)

# CPU-sized decoder: UperNet's 512-channel fusion conv costs ~10x the backbone at this image size.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),
    decode_head=dict(num_classes=4, norm_cfg=norm_cfg, channels=128),
    auxiliary_head=dict(num_classes=4, norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# Loading these small images takes milliseconds: worker processes would only compete with training for
# the two cores.
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_base_.synthetic_train_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(_base_.synthetic_val_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

# A short schedule from scratch: a higher AdamW lr than fine-tuning uses, warmup, then poly decay.
# fused=True: torch's one-kernel AdamW step, 4x faster than the per-parameter loop on CPU.
max_iters = 160
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=80)
optim_wrapper = dict(optimizer=dict(lr=4e-4, fused=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=max_iters, by_epoch=False),
]
# Pictures of predictions drawn on the image enlarged 3x (mmdavit/visualization.py): at the demo's
# 160x128 the labels cannot be read.
visualizer = dict(type='mmdavit.EnlargedSegLocalVisualizer', scale=3)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(draw=True, interval=10))
