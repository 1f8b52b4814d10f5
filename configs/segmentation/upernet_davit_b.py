# UperNet DaViT-B on ADE20K, 160k (paper: mIoU 49.4; 121M, 1175 GFLOPs).
_base_ = './upernet_davit_t.py'
# Heads: SyncBN for the 8-GPU reproduction, BN when not distributed on GPUs (see upernet_davit_t.py).

pretrained = 'hf-hub://timm/davit_base.msft_in1k'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
