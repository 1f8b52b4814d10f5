# Florence-2-base Mask R-CNN on the demo's synthetic shapes (tools/generate_synthetic_data.py): the demo config
# (data, image scale, schedule, CPU-sized RoI sampling) with maskrcnn_florence2_base.py's backbone and layer
# decay. From random weights (no download offline); the test suite trains it a few iterations.
_base_ = './maskrcnn_davit_t_synthetic.py'

model = dict(
    backbone=dict(arch='florence2-base', init_cfg=None),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
