# Mask2Former DaViT-T on ADE20K with layer-wise lr decay, an mmdavit addition: backbone layer i trains at
# 1e-4 * 0.1 * 0.9 ** (7 - i) (the zoo's backbone lr_mult 0.1 on top of the per-layer scale; stem 0, six
# DaViT-T layers, pixel decoder and transformer decoder 7 at 1e-4). The custom keys are the plain config's:
# no weight decay on DaViT's norms and on query_embed, query_feat and level_embed, decay on the rest of the
# backbone. One difference: our constructor has no norm_decay_mult; its 1-D rule (flat_decay_mult=0) exempts
# the heads' norm weights, as the zoo does, and also their biases. The hook checks the groups and logs layer_*_lr.
_base_ = './mask2former_davit_t_160k_ade20k.py'

optim_wrapper = dict(
    constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(
        _delete_=True,
        decay_rate=0.9,
        decay_type='layer_wise',
        custom_keys=_base_.optim_wrapper.paramwise_cfg.custom_keys))
custom_hooks = [dict(type='mmdavit.LayerDecayLRHook')]
