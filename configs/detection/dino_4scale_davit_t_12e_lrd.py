# DINO 4-scale DaViT-T, 12 epochs, with layer-wise lr decay (an mmdavit addition): the zoo's backbone
# lr_mult 0.1 stays as a custom key on top of the per-layer scale, so backbone layer i trains at
# 1e-4 * 0.1 * 0.9 ** (7 - i) (stem 0, six DaViT-T layers; neck, transformer and head at 1e-4). Weight decay
# 1e-4 on every parameter, as the zoo's DINO: the 'backbone' key's decay_mult (1) covers the backbone and
# flat_decay_mult=1 the norms and biases elsewhere. The hook checks the groups and logs layer_*_lr.
_base_ = './dino_4scale_davit_t_12e.py'

optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='layer_wise', flat_decay_mult=1.0))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
