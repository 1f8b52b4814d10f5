# Cascade Mask R-CNN + FPN with DaViT-T on COCO, 3x schedule: an mmdavit addition (not in the DaViT paper).
# Source: mmdet's configs/convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py
# (ConvNeXt-T 50.3 box / 43.6 mask AP), inherited as is: 4conv1fc SyncBN bbox heads with GIoU loss, DETR-style
# multi-scale + crop, AMP, AdamW 2e-4 / wd 0.05, 36 epochs (warmup 1000 iterations, steps 27 / 33), 8 GPUs x 2.
# Deliberate differences:
# * backbone DaViT-T (drop path 0.2, the paper's 3x value; ConvNeXt-T uses 0.4) and its pretrained weights;
# * layer-wise lr decay through mmdavit's constructor (mmdet's LearningRateDecayOptimizerConstructor knows
#   ConvNeXt and BEiT only). DaViT-T has 8 layer ids (stem, six spatial+channel layers, neck/heads), exactly
#   as many as mmdet gives ConvNeXt-T (num_layers=6, plus stem and head), so the zoo's decay 0.7 keeps the same
#   per-depth scales: stem 0.7**7 = 0.082, last backbone layer 0.7, neck/heads 1;
# * norm weights and biases get no weight decay (the constructor's flat_decay_mult=0 rule for 1-D parameters;
#   mmdet's constructor does the same for ConvNeXt).
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'
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
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, decay_rate=0.7, decay_type='layer_wise', num_layers=8))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
