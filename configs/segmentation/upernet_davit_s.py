# UperNet DaViT-S on ADE20K, 160k (paper: mIoU 48.8; 81M, 1030 GFLOPs).
_base_ = './upernet_davit_t.py'
# Heads: SyncBN for the 8-GPU reproduction, BN when not distributed on GPUs (see upernet_davit_t.py).

pretrained = 'hf-hub://timm/davit_small.msft_in1k'
model = dict(
    backbone=dict(arch='small', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
