# Mask2Former DaViT-T on the synthetic ADE-format shapes that `make demo` generates
# (tools/generate_synthetic_data.py), for tests and CPU trials. Same model and optimizer as
# mask2former_davit_t_160k_ade20k.py (backbone lr_mult 0.1, DaViT norms and embeddings without weight decay);
# the data, crop size, classes (4 + the "no object" class weight), schedule and evaluation interval change,
# and no pretrained weights (none being offline).
_base_ = ['./mask2former_davit_t_160k_ade20k.py', '../_base_/datasets/synthetic_ade20k.py']

# The paper's helper variables, kept true to what the datasets read.
dataset_type = _base_.synthetic_train_dataset.type
data_root = _base_.synthetic_data_root
crop_size = (128, 160)  # (h, w) of the generated images (make demo: --size 128 160)
num_classes = 4

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),
    decode_head=dict(num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])))

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
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(_base_.synthetic_train_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    dataset=dict(_base_.synthetic_val_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

# A short schedule from scratch: a higher AdamW lr than fine-tuning uses, warmup, then poly decay.
max_iters = 300
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=150)
optim_wrapper = dict(optimizer=dict(lr=4e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=max_iters, by_epoch=False),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(draw=True, interval=10))
