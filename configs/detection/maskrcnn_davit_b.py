# Mask R-CNN + FPN with DaViT-B on COCO, 1x (paper: box / mask AP 48.2 / 43.3; 107.3M, 491 GFLOPs).
_base_ = './maskrcnn_davit_t.py'

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
