# Mask R-CNN DaViT-S, 3x schedule (paper: box / mask AP 49.5 / 44.3).
_base_ = './maskrcnn_davit_t_3x.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
