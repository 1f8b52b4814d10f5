# UperNet DaViT-T 160k with layer-wise learning-rate decay, an mmdavit addition (the paper trains without it):
# lr of backbone layer i = base_lr * decay_rate ** (7 - i) (stem 0, six DaViT-T layers, neck/heads 7 at
# the full lr); norms and biases get no weight decay. The hook checks the groups and logs layer_*_lr.
_base_ = './upernet_davit_t.py'

optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise'))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
