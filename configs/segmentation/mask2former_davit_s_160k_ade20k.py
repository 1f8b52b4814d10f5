# Mask2Former DaViT-S on ADE20K, 160k iterations: mask2former_davit_t_160k_ade20k.py with DaViT-S (the same
# channels; the norm-name keys cover any depth). Drop path 0.3, as the zoo's Swin-S Mask2Former.
_base_ = './mask2former_davit_t_160k_ade20k.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
