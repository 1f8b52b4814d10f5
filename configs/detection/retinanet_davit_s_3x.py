# RetinaNet DaViT-S, 3x schedule (paper: box AP 48.2).
_base_ = './retinanet_davit_t_3x.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
