# Mask R-CNN + FPN with Florence-2-large's vision tower (DaViT-H sized, 360.6M parameters) on COCO, 1x. The
# recipe of maskrcnn_florence2_base.py (DaViT-B's, plus layer decay 0.9, window 12), with:
# - gradient checkpointing in every spatial and channel block (with_cp): the activations of a 2048-channel
#   stride-32 stage at 1333x800 would not fit beside the weights and AdamW state on common GPUs;
# - drop path 0.2: a deeper-channelled encoder than base on the same 1x schedule (DaViT's larger-model habit).
# When even that does not fit one GPU, shard it: README section "Training large models".
_base_ = './maskrcnn_florence2_base.py'

pretrained = 'hf-hub://microsoft/Florence-2-large'
model = dict(
    backbone=dict(
        arch='florence2-large', drop_path_rate=0.2, with_cp=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
