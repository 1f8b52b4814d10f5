# DINO 4-scale DaViT-B, 12 epochs: dino_4scale_davit_t_12e.py with DaViT-B.
_base_ = './dino_4scale_davit_t_12e.py'

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024]))
