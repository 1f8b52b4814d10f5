"""Export a whole mmdet / mmseg model to ONNX and check the file in ONNX Runtime.

Wrappers are registered by the model's class name::

    @register_wrapper('RetinaNet')
    def build_retinanet(model, cfg, *, score_thr, max_dets, paste_masks) -> torch.nn.Module: ...

Each wrapper's ``forward(images)`` takes ``float32 [B, 3, H, W]`` already preprocessed (resized, normalised,
padded as the config's test pipeline and data preprocessor do) and returns a tuple of tensors named by its
``output_names``; its ``task`` is ``'detection'``, ``'instance'`` or ``'semantic'``.
"""
from typing import Callable, Dict

import torch

WrapperBuilder = Callable[..., torch.nn.Module]
WRAPPERS: Dict[str, WrapperBuilder] = {}

# modules that register wrappers when imported (so ``build_wrapper`` finds them without the caller importing)
_WRAPPER_MODULES = ('mmdavit.deploy.detection', 'mmdavit.deploy.segmentation', 'mmdavit.deploy.query_based')


def register_wrapper(*class_names: str):
    """Decorator: ``builder(model, cfg, *, score_thr, max_dets, paste_masks)`` serves these model classes."""

    def decorate(builder: WrapperBuilder) -> WrapperBuilder:
        for name in class_names:
            WRAPPERS[name] = builder
        return builder

    return decorate


def _import_wrapper_modules():
    import importlib
    for module in _WRAPPER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # the module exists but something it needs is missing: say so
                raise


def build_wrapper(model: torch.nn.Module, cfg, *, score_thr: float = 0.05, max_dets: int = 100,
                  paste_masks: bool = False) -> torch.nn.Module:
    """The export wrapper for ``model`` (an mmdet detector or mmseg segmentor in eval mode), by its class."""
    _import_wrapper_modules()
    name = type(model).__name__
    if name not in WRAPPERS:
        raise NotImplementedError(
            f'No ONNX export wrapper for {name}; supported: {", ".join(sorted(WRAPPERS)) or "none"}')
    return WRAPPERS[name](model, cfg, score_thr=score_thr, max_dets=max_dets, paste_masks=paste_masks)
