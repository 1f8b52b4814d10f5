# Cascade Mask R-CNN DaViT-S, 3x: cascade_maskrcnn_davit_t_3x.py with DaViT-S (source: mmdet's
# cascade-mask-rcnn_convnext-s-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py).
# DaViT-S has 14 layer ids (stem, 12 layers, neck/heads), as many as mmdet gives ConvNeXt-S (num_layers=12),
# which the zoo trains with the same decay 0.7. Drop path 0.2 (the paper's 3x value; ConvNeXt-S uses 0.6).
_base_ = './cascade_maskrcnn_davit_t_3x.py'

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=14))
