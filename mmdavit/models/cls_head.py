"""DaViT's ImageNet classifier for mmpretrain's ``ImageClassifier``, and its checkpoint conversion.

The official (and timm) classifier averages the *un-normalised* last-stage tokens, then applies
LayerNorm(8C) (official ``norms``, timm ``head.norm``) and Linear(8C, classes) (official ``head``, timm
``head.fc``). The dense backbone instead normalises every token (``norm{i}``) before anything pools them;
LayerNorm does not commute with averaging, so that would not reproduce the released classifiers. Hence:

* :class:`DaViTClsBackbone`: ``DaViT`` whose output norms are identities;
* :class:`DaViTClsHead`: an mmpretrain ``ClsHead`` doing pool -> LayerNorm -> Linear;
* :func:`convert_classifier_state_dict`: official / timm / mmdavit classifier weights -> ``ImageClassifier``
  keys (``backbone.*`` in mmdavit names, ``head.norm.*``, ``head.fc.*``).

Not imported by ``mmdavit.models``: that would import mmpretrain (about 1.5 s) for every detection and
segmentation user. Classification configs list ``mmdavit.models.cls_head`` in ``custom_imports``.
"""
import re
from typing import Dict, Tuple

import torch
import torch.nn as nn
from mmpretrain.models.heads import ClsHead

from mmdavit.models.checkpoints import MMDAVIT_KEY, StateDict, convert_state_dict, strip_prefix
from mmdavit.models.davit import DaViT
from mmdavit.registry import MODELS

# Classifier-head keys of every supported format -> DaViTClsHead's. The names do not collide across formats:
# ``norms.*`` / ``head.weight`` are official, ``head.norm.*`` / ``head.fc.*`` timm's (and ours).
HEAD_KEYS: Dict[str, str] = {
    'norms.weight': 'head.norm.weight',
    'norms.bias': 'head.norm.bias',
    'head.weight': 'head.fc.weight',
    'head.bias': 'head.fc.bias',
    **{f'head.{name}': f'head.{name}' for name in ('norm.weight', 'norm.bias', 'fc.weight', 'fc.bias')},
}
PER_TOKEN_NORM = re.compile(r'^norm\d+\.')


@MODELS.register_module()
class DaViTClsBackbone(DaViT):
    """``DaViT`` with identity output norms, for :class:`DaViTClsHead` (which normalises after pooling).

    Takes ``DaViT``'s arguments; use ``out_indices=(3, )``.

    Example:
        >>> import torch
        >>> from mmdavit.models.cls_head import DaViTClsBackbone, DaViTClsHead
        >>> backbone, head = DaViTClsBackbone(arch='tiny', out_indices=(3, )), DaViTClsHead(in_channels=768)
        >>> tuple(head(backbone(torch.rand(1, 3, 224, 224))).shape)
        (1, 1000)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for i in self.out_indices:
            setattr(self, f'norm{i}', nn.Identity())


@MODELS.register_module()
class DaViTClsHead(ClsHead):
    """The official DaViT classifier head: average the last stage's tokens, LayerNorm, Linear.

    Args:
        num_classes (int): Number of classes. Default 1000.
        in_channels (int): Channels of the last stage, 8C: 768 for T and S, 1024 for B.
        init_cfg (dict): Default: truncated normal (std 0.02) for the Linear, as DaViT's own init.
        **kwargs: ``ClsHead``'s ``loss``, ``topk``, ``cal_acc``.
    """

    def __init__(self,
                 num_classes: int = 1000,
                 in_channels: int = 768,
                 init_cfg: dict = dict(type='TruncNormal', layer='Linear', std=0.02),
                 **kwargs):
        super().__init__(init_cfg=init_cfg, **kwargs)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.norm = nn.LayerNorm(in_channels)
        self.fc = nn.Linear(in_channels, num_classes)

    def pre_logits(self, feats: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Pooled, normalised features of the last stage output ``(B, C, H, W)``: ``(B, C)``."""
        last = feats[-1]
        if last.shape[1] != self.in_channels:
            raise ValueError(f'DaViTClsHead has in_channels={self.in_channels} but the backbone\'s last stage '
                             f'gives {last.shape[1]} channels (set head.in_channels={last.shape[1]})')
        return self.norm(last.mean(dim=(2, 3)))

    def forward(self, feats: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.fc(self.pre_logits(feats))


def convert_classifier_state_dict(state_dict: StateDict) -> Tuple[StateDict, str]:
    """Official, timm or mmdavit DaViT classifier weights -> ``ImageClassifier`` keys.

    Returns the converted state dict and the source format of the backbone keys. Raises ``ValueError`` for
    checkpoints without the pool -> LayerNorm -> Linear head: dense-prediction backbones (no head) and
    mmpretrain's DaViT classifier (per-token ``norm3``, then pooling and a bare Linear, which this head
    cannot express).
    """
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    head = {HEAD_KEYS[k]: v for k, v in state_dict.items() if k in HEAD_KEYS}
    body, _ = strip_prefix({k: v for k, v in state_dict.items() if k not in HEAD_KEYS})
    body, src_format = convert_state_dict(body)
    per_token_norms = sorted(k for k in body if PER_TOKEN_NORM.match(k))
    if 'head.norm.weight' not in head or 'head.fc.weight' not in head:
        hint = (f'it has per-token output norms ({", ".join(per_token_norms)}) instead: an mmpretrain DaViT '
                f'classifier (evaluate it with mmpretrain\'s davit configs) or a detection/segmentation backbone'
                if per_token_norms else 'is it a detection/segmentation checkpoint?')
        raise ValueError(f'No DaViT classifier head (official norms.* + head.*, or timm head.norm.* + '
                         f'head.fc.*) in this {src_format} checkpoint; {hint}')
    unknown = sorted(k for k in body if not MMDAVIT_KEY.match(k) or PER_TOKEN_NORM.match(k))
    if unknown:
        raise ValueError(f'Keys with no place in the DaViT classifier: {", ".join(unknown)}. Is this a '
                         f'classification checkpoint of DaViT (official or timm)?')
    return {**{f'backbone.{k}': v for k, v in body.items()}, **head}, src_format
