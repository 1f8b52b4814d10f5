# Mask R-CNN Florence-2-base, 3x: the recipe of maskrcnn_florence2_base.py (DaViT-B's, plus layer decay 0.9,
# window 12) on DaViT's 3x schedule: 36 epochs, steps at 27 and 33, drop path 0.2.
_base_ = './maskrcnn_florence2_base.py'

model = dict(backbone=dict(drop_path_rate=0.2))
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]
