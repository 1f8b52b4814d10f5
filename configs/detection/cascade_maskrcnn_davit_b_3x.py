# Cascade Mask R-CNN DaViT-B, 3x: cascade_maskrcnn_davit_t_3x.py with DaViT-B (source: mmdet's
# cascade-mask-rcnn_convnext-s-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py; mmdet has no ConvNeXt-B
# cascade config). 14 layer ids and decay 0.7 as for DaViT-S; drop path 0.2 (the paper's 3x value).
_base_ = './cascade_maskrcnn_davit_t_3x.py'

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=14))
