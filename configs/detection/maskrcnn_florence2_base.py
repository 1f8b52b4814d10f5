# Mask R-CNN + FPN with Florence-2-base's vision tower on COCO, 1x. No paper reports this model; the recipe is
# ours, chosen as follows:
# - DaViT-B's official Mask R-CNN recipe (inherited): AdamW 1e-4, weight decay 0.05, 12 epochs (steps 8, 11),
#   DETR-style multi-scale + crop, 16 images per batch (8 GPUs x 2), drop path 0.1.
# - Layer-wise lr decay 0.9 (an mmdavit addition): 14 layer ids, so the stem trains at 0.9 ** 13 = 0.25 of the
#   heads' lr. A 90M-parameter encoder pretrained at scale is worth keeping close to its weights; norms and
#   biases get no weight decay.
# - Window 12 kept, as pretrained: no weight depends on it, but the attention the weights learnt spans 12x12.
# - Output norms norm0..3 are not in Florence-2's checkpoint: they start fresh (the load report says so).
# - Florence-2 normalises RGB with ImageNet mean/std, as mmdet's Mask R-CNN data preprocessor already does.
_base_ = './maskrcnn_davit_t.py'

# The whole Florence-2 checkpoint (MIT licence); only its `vision_tower.` tensors are read.
pretrained = 'hf-hub://microsoft/Florence-2-base'
model = dict(
    backbone=dict(arch='florence2-base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))

optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
