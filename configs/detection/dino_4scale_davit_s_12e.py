# DINO 4-scale DaViT-S, 12 epochs: dino_4scale_davit_t_12e.py with DaViT-S (same channels as DaViT-T).
_base_ = './dino_4scale_davit_t_12e.py'

pretrained = 'checkpoints/davit_s.pth'
model = dict(backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
