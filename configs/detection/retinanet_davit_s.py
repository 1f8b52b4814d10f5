# RetinaNet + FPN with DaViT-S on COCO, 1x (paper: box AP 46.0; 59.9M, 332 GFLOPs).
_base_ = './retinanet_davit_t.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
