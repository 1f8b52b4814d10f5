# RetinaNet DaViT-S, 3x schedule (paper: box AP 48.2).
_base_ = './retinanet_davit_t_3x.py'

pretrained = 'checkpoints/davit_s.pth'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))
