# maskrcnn_florence2_large.py (Mask R-CNN + FPN on Florence-2-large's 360.6M-parameter DaViT tower, with_cp)
# trained with FSDP: parameters, gradients and AdamW state sharded over the GPUs, one FSDP unit per DaViT layer,
# full state-dict checkpoints. README, "Training large models".
# One recipe change: no layer-wise LR decay (plain AdamW 1e-4, weight decay 0.05 on every parameter, as the DaViT
# Mask R-CNN configs). DaViTFSDPStrategy builds the layer-decay groups as DDP does, but resuming a layer-decay
# run under FSDP is not tested yet.
_base_ = './maskrcnn_florence2_large.py'

runner_type = 'mmdavit.DaViTFlexibleRunner'  # mmengine's FlexibleRunner + DaViTRunner's guarantees
strategy = dict(type='mmdavit.DaViTFSDPStrategy')
init_weights_for_test_or_val = False  # tools/test.py loads the checkpoint; no pretrained download first

optim_wrapper = dict(constructor='DefaultOptimWrapperConstructor', paramwise_cfg=dict(_delete_=True))
custom_hooks = []  # LayerDecayLRHook: no layer decay here
