"""mmdavit: the DaViT backbone for OpenMMLab detection and segmentation.

Importing the package registers the backbone, optimizer-wrapper constructor and hooks in the ``mmdavit``
scope, and allow-lists the types mmengine stores in its checkpoints for torch's ``weights_only`` loads.
"""
from .compat import allow_mmengine_checkpoint_types

__version__ = '0.1.0'

allow_mmengine_checkpoint_types()

from . import engine, models  # noqa: E402,F401  (registers DaViT, the constructor and hooks)
