# UperNet + auxiliary FCN with Florence-2-base's vision tower on ADE20K, 160k iterations, 512x512 crops. No
# paper reports this model; the recipe is ours:
# - DaViT's official UperNet recipe (inherited): AdamW 6e-5, weight decay 0.01, warmup 1500 then poly, 16
#   crops per batch (8 GPUs x 2), SyncBN heads, drop path 0.3.
# - Layer-wise lr decay 0.9 (an mmdavit addition; 14 layer ids, stem at 0.25 of the heads' lr): a 90M encoder
#   pretrained at scale is worth keeping close to its weights; norms and biases get no weight decay.
# - Window 12 kept, as pretrained. Output norms norm0..3 start fresh (not in Florence-2's checkpoint).
_base_ = './upernet_davit_t.py'

pretrained = 'hf-hub://microsoft/Florence-2-base'
model = dict(
    backbone=dict(arch='florence2-base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))

optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
