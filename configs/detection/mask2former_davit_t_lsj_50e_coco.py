# Mask2Former (instance segmentation) with DaViT-T on COCO, large-scale jitter, 50 epochs: an mmdavit addition.
# Source: mmdet's configs/mask2former/mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco.py (Swin-T 47.7 box /
# 44.7 mask AP), which we rebuild on the same base, mask2former_r50_8xb2-lsj-50e_coco.py: LSJ 1024x1024, AdamW
# 1e-4 / wd 0.05, gradient clip 0.01, backbone lr_mult 0.1, 50 epochs (368,750 iterations), 8 GPUs x 2.
# Deliberate differences: backbone DaViT-T with its pretrained weights (drop path 0.3, as the Swin-T config).
# Weight decay: the zoo's custom_keys put the whole backbone under 'backbone' (lr_mult 0.1, decay_mult 1), which
# overrides mmengine's norm_decay_mult, so it lists the backbone's norm layers by name to exempt them. Here
# davit_norms names DaViT's: the stem norm, the downsample norms, norm1/norm2 of every spatial and channel
# block and the output norms norm0-3. Exactly those DaViT norm weights and biases get no weight decay;
# everything else in the backbone (biases included, as in the zoo) is decayed. Outside the backbone the zoo's
# rules stay: query_embed, query_feat and level_embed are not decayed, nor (norm_decay_mult=0) the head's norms.
_base_ = 'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py'
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

# Parameter-name substrings of every DaViT norm layer (of any depth): backbone.stem.norm,
# backbone.stages.{i}.downsample.norm, backbone.stages.{i}.blocks.{j}.{spatial,channel}.norm{1,2},
# backbone.norm{i}. The trailing dots keep e.g. 'backbone.norm' from matching anything but norm0-3's own keys.
davit_norms = ['backbone.stem.norm.', 'downsample.norm.', 'spatial.norm1.', 'spatial.norm2.', 'channel.norm1.',
               'channel.norm2.', *(f'backbone.norm{i}.' for i in range(4))]
backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={key: backbone_norm_multi for key in davit_norms}, norm_decay_mult=0.0))
