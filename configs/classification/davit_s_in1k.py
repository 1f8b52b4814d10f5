# DaViT-S ImageNet-1k classifier (mmpretrain ImageClassifier), evaluating the released official or timm
# weights as the official code does (paper: 84.2 top-1; 49.75M params, 8.80 GFLOPs at 224x224):
#   python tools/model_converters/davit_cls2mmpretrain.py davit_small.pth checkpoints/davit_s_in1k.pth
#   python tools/test.py configs/classification/davit_s_in1k.py checkpoints/davit_s_in1k.pth
# Data (data/imagenet, val split) and the training recipe are mmpretrain's DaViT ones.
_base_ = 'mmpretrain::davit/davit-small_4xb256_in1k.py'
custom_imports = dict(imports=['mmdavit', 'mmdavit.models.cls_head'], allow_failed_imports=False)
runner_type = 'mmdavit.DaViTRunner'  # mmengine's Runner + dataset-preparation hints on missing data
# mmengine's CheckpointHook in a crash-safe order: new checkpoint, then last_checkpoint, then delete old ones
default_hooks = dict(checkpoint=dict(type='mmdavit.AtomicCheckpointHook'))

# The official head averages the last stage's *un-normalised* tokens, then LayerNorm, then Linear: a backbone
# without per-token output norms, no pooling neck, and DaViTClsHead (mmdavit/models/cls_head.py).
model = dict(
    backbone=dict(type='mmdavit.DaViTClsBackbone', arch='small', out_indices=(3, )),
    neck=None,
    head=dict(type='mmdavit.DaViTClsHead', num_classes=1000, in_channels=768),
    # ImageNet mean / std on RGB (timm's IMAGENET_DEFAULT_*). Inside the model so that it also applies when
    # the model is built without a Runner (tools/infer.py, tools/analysis/get_flops.py, tests).
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=1000,
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True))

# Official evaluation (crop_pct 0.9 in the official timm config): bicubic resize of the short side to
# 248 = floor(224 / 0.9), centre crop 224. (timm 1.x's davit cfg says crop_pct 0.95, mmpretrain resizes to 236.)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=248, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
