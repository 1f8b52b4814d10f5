# DINO 4-scale DaViT-S, 12 epochs: dino_4scale_davit_t_12e.py with DaViT-S (same channels as DaViT-T).
_base_ = './dino_4scale_davit_t_12e.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
