"""Training machinery: the layer-wise LR decay constructor and the hook that checks and logs it.

Importing this package registers both in mmdavit's registries and, under the same plain names, in
mmengine's roots (see ``layer_decay.py``).
"""
from .hooks import LayerDecayLRHook
from .layer_decay import DaViTLayerDecayOptimWrapperConstructor

__all__ = ['DaViTLayerDecayOptimWrapperConstructor', 'LayerDecayLRHook']
