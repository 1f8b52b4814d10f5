# Mask2Former with DaViT-T on ADE20K, 160k iterations, 512x512 crops: an mmdavit addition (the paper has UperNet).
# Source: mmseg's configs/mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py (Swin-T 48.66 mIoU), rebuilt
# on its base mask2former_r50_8xb2-160k_ade20k-512x512.py: AdamW 1e-4 / wd 0.05, gradient clip 0.01, backbone
# lr_mult 0.1, poly schedule over 160k iterations, 8 GPUs x 2.
# Deliberate differences: backbone DaViT-T with its pretrained weights (drop path 0.3, as the Swin-T config).
# Weight decay as in configs/detection/mask2former_davit_t_lsj_50e_coco.py: exactly DaViT's norm weights and
# biases (named below) are not decayed in the backbone; query_embed, query_feat, level_embed and the head's norms
# are not decayed (the zoo's rules); every other parameter is.
_base_ = 'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmdavit'], allow_failed_imports=False)
runner_type = 'mmdavit.DaViTRunner'  # mmengine's Runner + dataset-preparation hints on missing data
# mmengine's CheckpointHook in a crash-safe order: new checkpoint, then last_checkpoint, then delete old ones
default_hooks = dict(checkpoint=dict(type='mmdavit.AtomicCheckpointHook'))

# The official ImageNet-1k weights by name (timm's hub copy, cached by huggingface_hub); a local file in any
# format works too (--cfg-options model.backbone.init_cfg.checkpoint=PATH): docs/checkpoint-formats.md.
pretrained = 'hf-hub://timm/davit_tiny.msft_in1k'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdavit.DaViT',
        arch='tiny',
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]))

# Every DaViT norm layer, of any depth: stem, downsamples, norm1/norm2 of each spatial and channel block,
# output norms norm0-3 (the trailing dots keep the keys from matching other names).
davit_norms = ['backbone.stem.norm.', 'downsample.norm.', 'spatial.norm1.', 'spatial.norm2.', 'channel.norm1.',
               'channel.norm2.', *(f'backbone.norm{i}.' for i in range(4))]
backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={key: backbone_norm_multi for key in davit_norms}, norm_decay_mult=0.0))
