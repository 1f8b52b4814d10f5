# Mask R-CNN DaViT-B, 3x schedule (paper: box / mask AP 49.9 / 44.6).
_base_ = './maskrcnn_davit_t_3x.py'

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
