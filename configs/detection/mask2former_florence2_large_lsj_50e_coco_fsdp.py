# Mask2Former (COCO instance segmentation, LSJ 1024x1024, 50 epochs) on Florence-2-large's DaViT tower (361M
# parameters), trained with FSDP: recipe of mask2former_davit_t_lsj_50e_coco.py, sharded as
# maskrcnn_davit_h_fsdp.py (one FSDP unit per DaViT layer, activation checkpointing in every block, full
# state-dict checkpoints). The norm-layer custom_keys work unchanged: none spans a DaViT layer's boundary, where
# FSDP inserts '_fsdp_wrapped_module.' into parameter names. README, "Training large models".
_base_ = './mask2former_davit_t_lsj_50e_coco.py'

runner_type = 'mmdavit.DaViTFlexibleRunner'
strategy = dict(type='mmdavit.DaViTFSDPStrategy')
init_weights_for_test_or_val = False  # tools/test.py loads the checkpoint; no pretrained download first

pretrained = 'hf-hub://microsoft/Florence-2-large'
model = dict(
    backbone=dict(arch='florence2-large', with_cp=True, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(in_channels=[256, 512, 1024, 2048]))
