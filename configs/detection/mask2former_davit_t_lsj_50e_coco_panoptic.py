# Mask2Former (panoptic segmentation) with DaViT-T on COCO panoptic, large-scale jitter, 50 epochs: an mmdavit
# addition. Source: mmdet's configs/mask2former/mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco-panoptic.py
# (Swin-T PQ 53.4), rebuilt on its base mask2former_r50_8xb2-lsj-50e_coco-panoptic.py (LSJ 1024x1024, AdamW 1e-4 /
# wd 0.05, gradient clip 0.01, backbone lr_mult 0.1, 50 epochs, 8 GPUs x 2). Deliberate differences and the
# weight-decay rules: exactly those of mask2former_davit_t_lsj_50e_coco.py (the instance twin), see its header.
_base_ = 'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py'
custom_imports = dict(imports=['mmdavit'], allow_failed_imports=False)
runner_type = 'mmdavit.DaViTRunner'  # mmengine's Runner + dataset-preparation hints on missing data
# mmengine's CheckpointHook in a crash-safe order: new checkpoint, then last_checkpoint, then delete old ones
default_hooks = dict(checkpoint=dict(type='mmdavit.AtomicCheckpointHook'))

# The official ImageNet-1k weights by name (timm's hub copy, cached by huggingface_hub); a local file in any
# format works too (--cfg-options model.backbone.init_cfg.checkpoint=PATH): docs/checkpoint-formats.md.
pretrained = 'hf-hub://timm/davit_tiny.msft_in1k'
model = dict(
    type='Mask2Former',
    backbone=dict(
        _delete_=True,
        type='mmdavit.DaViT',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(type='Mask2FormerHead', in_channels=[96, 192, 384, 768]),
    init_cfg=None)

# Every DaViT norm layer, of any depth (see mask2former_davit_t_lsj_50e_coco.py): no weight decay, lr_mult 0.1.
davit_norms = ['backbone.stem.norm.', 'downsample.norm.', 'spatial.norm1.', 'spatial.norm2.', 'channel.norm1.',
               'channel.norm2.', *(f'backbone.norm{i}.' for i in range(4))]
backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={key: backbone_norm_multi for key in davit_norms}, norm_decay_mult=0.0))
