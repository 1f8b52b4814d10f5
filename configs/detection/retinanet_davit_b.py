# RetinaNet + FPN with DaViT-B on COCO, 1x (paper: box AP 46.7; 98.5M, 471 GFLOPs).
_base_ = './retinanet_davit_t.py'

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024]))
