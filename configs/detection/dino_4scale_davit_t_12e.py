# DINO (4 feature scales) with DaViT-T on COCO, 12 epochs: an mmdavit addition (not in the DaViT paper).
# Source: mmdet's configs/dino/dino-4scale_r50_8xb2-12e_coco.py, inherited as is: 900 queries, 6+6 deformable
# encoder/decoder layers, denoising queries, DETR-style multi-scale + crop, AdamW 1e-4 / wd 1e-4, gradient clip
# 0.1, backbone lr_mult 0.1, 12 epochs (step at 11), 8 GPUs x 2. (Swin-T 4-scale 12 epochs: 51.3 AP, detrex.)
# Deliberate differences: backbone DaViT-T with its pretrained weights (stages 1-3, strides 8/16/32, into the
# ChannelMapper as ResNet-50's C3-C5), drop path 0.1 (the paper's 12-epoch value).
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
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
        out_indices=(1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
