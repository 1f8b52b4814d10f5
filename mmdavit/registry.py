"""mmdavit registries: children of mmengine's roots under scope ``mmdavit``.

Because they hang off the roots, ``type='mmdavit.DaViT'`` resolves from any default scope (mmdet, mmseg,
mmpretrain): mmengine imports ``mmdavit.registry`` on seeing the prefix, and ``locations`` imports the
modules that register into each registry on first lookup.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmdavit', locations=['mmdavit.models'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmdavit',
    locations=['mmdavit.engine'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmdavit', locations=['mmdavit.engine'])
RUNNERS = Registry('runner', parent=MMENGINE_RUNNERS, scope='mmdavit', locations=['mmdavit.engine'])
STRATEGIES = Registry('strategy', parent=MMENGINE_STRATEGIES, scope='mmdavit', locations=['mmdavit.engine'])
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, scope='mmdavit', locations=['mmdavit.visualization'])
