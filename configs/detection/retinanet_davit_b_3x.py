# RetinaNet DaViT-B, 3x schedule (paper: box AP 48.7).
_base_ = './retinanet_davit_t_3x.py'

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024]))
