"""The package's public names: what users type first (``from mmdavit import DaViT``)."""
from mmengine.registry import Registry

import mmdavit
import mmdavit.models.cls_head  # noqa: F401  (registers the classifier parts, as classification configs do)
from mmdavit import registry


def registered_classes() -> dict:
    """Every class registered in mmdavit's own registries, by registered name."""
    classes = {}
    for value in vars(registry).values():
        if isinstance(value, Registry) and value.scope == 'mmdavit':
            value.import_from_location()
            classes.update(value.module_dict)
    return classes


def test_first_things_users_type():
    from mmdavit import (AtomicCheckpointHook, DaViT, DaViTClsHead, DaViTLayerDecayOptimWrapperConstructor,
                         DaViTRunner, LayerDecayLRHook)
    assert registry.MODELS.get('DaViT') is DaViT and registry.MODELS.get('DaViTClsHead') is DaViTClsHead
    assert registry.RUNNERS.get('DaViTRunner') is DaViTRunner
    assert registry.HOOKS.get('LayerDecayLRHook') is LayerDecayLRHook
    assert registry.HOOKS.get('AtomicCheckpointHook') is AtomicCheckpointHook
    assert registry.OPTIM_WRAPPER_CONSTRUCTORS.get('DaViTLayerDecayOptimWrapperConstructor') is \
        DaViTLayerDecayOptimWrapperConstructor


def test_every_registered_class_is_exported():
    classes = registered_classes()
    assert 'DaViT' in classes and 'DaViTRunner' in classes
    for name, cls in classes.items():
        assert name in mmdavit.__all__, f'{name} is registered but not in mmdavit.__all__'
        assert getattr(mmdavit, name) is cls


def test_all_names_resolve():
    for name in mmdavit.__all__:
        assert getattr(mmdavit, name) is not None
