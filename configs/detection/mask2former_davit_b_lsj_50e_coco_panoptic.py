# Mask2Former DaViT-B, LSJ 50 epochs: mask2former_davit_t_lsj_50e_coco_panoptic.py with DaViT-B. Drop path 0.3, as
# the zoo's Swin-B Mask2Former.
_base_ = './mask2former_davit_t_lsj_50e_coco_panoptic.py'

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(in_channels=[128, 256, 512, 1024]))
