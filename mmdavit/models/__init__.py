from . import hub  # noqa: F401  (registers the hf-hub:// checkpoint scheme with mmengine)
from .checkpoints import convert_state_dict, detect_format, load_pretrained
from .davit import DaViT

__all__ = ['DaViT', 'convert_state_dict', 'detect_format', 'load_pretrained']
