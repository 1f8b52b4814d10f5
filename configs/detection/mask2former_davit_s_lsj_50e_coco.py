# Mask2Former DaViT-S, LSJ 50 epochs: mask2former_davit_t_lsj_50e_coco.py with DaViT-S (the same channels;
# the norm-name keys cover any depth). Drop path 0.3, as the zoo's Swin-S Mask2Former.
_base_ = './mask2former_davit_t_lsj_50e_coco.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
