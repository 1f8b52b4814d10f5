# DINO with 5 feature scales and DaViT-B, 12 epochs. Source: mmdet's configs/dino/dino-5scale_swin-l_8xb2-12e_coco.py
# (all four backbone stages, strides 4-32, plus the ChannelMapper's extra stride-64 level; num_levels 5 in
# encoder and decoder), on dino_4scale_davit_b_12e.py. Deliberate differences from the Swin-L config: DaViT-B
# instead of Swin-L (drop path 0.1 instead of 0.2, the paper's 12-epoch value); no gradient checkpointing
# (with_cp=True saves memory at ~1.3x step time, set it if the stride-4 level does not fit); its leftover
# `fp16 = dict(loss_scale=512.)` is dropped (mmengine ignores it; use --amp for mixed precision).
_base_ = './dino_4scale_davit_b_12e.py'

num_levels = 5
model = dict(
    num_feature_levels=num_levels,
    backbone=dict(out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[128, 256, 512, 1024], num_outs=num_levels),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=num_levels))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=num_levels))))
