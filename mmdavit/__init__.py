"""mmdavit: the DaViT backbone for OpenMMLab detection and segmentation.

Importing the package registers the backbone, optimizer-wrapper constructor and hooks in the ``mmdavit``
scope, allow-lists the types mmengine stores in its checkpoints for torch's ``weights_only`` loads, and
teaches mmengine the ``mmdavit::`` config prefix (as the start-up hook does in installs that process
``.pth`` files; this covers ``python -S``, ``pip install --target`` and PYTHONPATH-only set-ups).

The public classes are importable from here: ``from mmdavit import DaViT``. The classifier parts
(``DaViTClsBackbone``, ``DaViTClsHead``) and the enlarged visualizers are imported on first access: they need
mmpretrain, or mmdet and mmseg, which not every user loads.
"""
import importlib

from .compat import check_supported_torch

check_supported_torch()  # first: on an older torch, one line naming the torch it needs

import mmdavit_config_hook  # noqa: E402

mmdavit_config_hook.install()  # before mmengine is imported below, so its modules are patched as they load

from .compat import allow_mmengine_checkpoint_types  # noqa: E402

__version__ = '0.1.0'

allow_mmengine_checkpoint_types()

from . import engine, models  # noqa: E402  (registers DaViT, the constructor, hooks and runners)
from .engine import *  # noqa: E402,F401,F403  (each subpackage's __all__ says what is public)
from .models import *  # noqa: E402,F401,F403

# Public names whose modules import mmpretrain (classifier) or mmdet and mmseg (visualizers): loaded on first use.
_LAZY = {'DaViTClsBackbone': 'mmdavit.models.cls_head', 'DaViTClsHead': 'mmdavit.models.cls_head',
         'convert_classifier_state_dict': 'mmdavit.models.cls_head',
         'EnlargedDetLocalVisualizer': 'mmdavit.visualization', 'EnlargedSegLocalVisualizer': 'mmdavit.visualization'}

__all__ = [*engine.__all__, *models.__all__, *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
