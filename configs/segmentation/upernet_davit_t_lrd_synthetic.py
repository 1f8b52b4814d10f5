# The synthetic demo of upernet_davit_t.py with the layer-wise learning-rate decay of upernet_davit_t_lrd.py.
_base_ = './upernet_davit_t_synthetic.py'

optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
