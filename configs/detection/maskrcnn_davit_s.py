# Mask R-CNN + FPN with DaViT-S on COCO, 1x (paper: box / mask AP 47.7 / 42.9; 69.2M, 351 GFLOPs).
_base_ = './maskrcnn_davit_t.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
