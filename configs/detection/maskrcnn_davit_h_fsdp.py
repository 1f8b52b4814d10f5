# Mask R-CNN + FPN with DaViT-H (347M-parameter backbone, 368M in all), trained with FSDP: parameters,
# gradients and AdamW state sharded over the GPUs (each holds 1/N of them), one FSDP unit per DaViT layer
# (spatial + channel block), activation checkpointing in every block. Recipe otherwise as maskrcnn_davit_t.py
# (1x, AdamW 1e-4, 8 GPUs x 2).
# Launch: tools/dist_train.sh configs/detection/maskrcnn_davit_h_fsdp.py 8 (README, "Training large models").
# Checkpoints are ordinary full state dicts: test and infer with this config or any unsharded Mask R-CNN one.
_base_ = './maskrcnn_davit_t.py'

runner_type = 'mmdavit.DaViTFlexibleRunner'  # mmengine's FlexibleRunner + DaViTRunner's guarantees
strategy = dict(type='mmdavit.DaViTFSDPStrategy')
# tools/test.py with this config loads the checkpoint into the plain model; no pretrained download first.
init_weights_for_test_or_val = False

# DaViT-H weights (Ding et al. pre-trained them on a private dataset) were not released: put yours here, or use
# maskrcnn_florence2_large_fsdp.py, whose Florence-2-large tower is public and of the same size.
pretrained = 'checkpoints/davit_h.pth'
model = dict(
    backbone=dict(arch='huge', with_cp=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
