# Mask R-CNN + FPN on Florence-2-large's DaViT vision tower (361M parameters; weights from the Hugging Face hub),
# trained with FSDP as maskrcnn_davit_h_fsdp.py: sharded parameters, gradients and AdamW state, one FSDP unit per
# DaViT layer, activation checkpointing in every block.
_base_ = './maskrcnn_davit_h_fsdp.py'

pretrained = 'hf-hub://microsoft/Florence-2-large'
model = dict(backbone=dict(arch='florence2-large', init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
