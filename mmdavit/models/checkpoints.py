"""Checkpoint formats -> mmdavit keys: format detection, conversion and loading with a loud report.

Formats (see ``shared/davit-reference.md``):
    official    ``patch_embeds.{i}``, ``main_blocks.{s}.{j}.{0|1}``, ``cpe.{0|1}`` (+ ``norms``, ``head``)
    timm        ``stem``, ``stages.{i}.downsample``, ``stages.{s}.blocks.{j}.{0|1}`` (+ ``head``)
    mmpretrain  ``patch_embed.projection``, downsample at the *end* of stage i, ``spatial_block``,
                ``attn.w_msa``, ``ffn.layers``
    mmdavit     ours: ``stem``, ``stages.{i}.downsample``, ``stages.{s}.blocks.{j}.{spatial|channel}``
Any of them may be wrapped in ``state_dict`` / ``model`` and carry a ``backbone.`` (or ``module.``) prefix.
"""
import os
import re
from typing import Callable, Dict, List, NamedTuple, Tuple, Union

import torch
from mmengine.logging import MMLogger

StateDict = Dict[str, torch.Tensor]
Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]

FORMAT_MARKERS = {
    'mmdavit': r'^stages\.\d+\.blocks\.\d+\.(spatial|channel)\.',
    'timm': r'^stages\.\d+\.blocks\.\d+\.[01]\.',
    'official': r'^(patch_embeds|main_blocks)\.',
    'mmpretrain': r'^(patch_embed\.projection|stages\.\d+\.blocks\.\d+\.(spatial|channel)_block)\.',
}

MMDAVIT_KEY = re.compile(r'^(stem|stages\.\d+\.(downsample|blocks\.\d+\.(spatial|channel))|norm\d+)\.')

_BLOCK_TYPE = {'0': 'spatial', '1': 'channel'}
CONVERSION_RULES: Dict[str, List[Rule]] = {
    'mmdavit': [],
    'timm': [
        (r'^stages\.(\d+)\.blocks\.(\d+)\.([01])\.', lambda m: f'stages.{m[1]}.blocks.{m[2]}.{_BLOCK_TYPE[m[3]]}.'),
    ],
    'official': [
        (r'^patch_embeds\.0\.proj\.', 'stem.conv.'),
        (r'^patch_embeds\.0\.norm\.', 'stem.norm.'),
        (r'^patch_embeds\.(\d+)\.proj\.', r'stages.\1.downsample.conv.'),
        (r'^patch_embeds\.(\d+)\.norm\.', r'stages.\1.downsample.norm.'),
        (r'^main_blocks\.(\d+)\.(\d+)\.([01])\.', lambda m: f'stages.{m[1]}.blocks.{m[2]}.{_BLOCK_TYPE[m[3]]}.'),
        (r'\.cpe\.0\.', '.cpe1.'),
        (r'\.cpe\.1\.', '.cpe2.'),
    ],
    'mmpretrain': [
        (r'^patch_embed\.projection\.', 'stem.conv.'),
        (r'^patch_embed\.norm\.', 'stem.norm.'),
        # mmpretrain downsamples at the end of stage i; ours at the start of stage i + 1.
        (r'^stages\.(\d+)\.downsample\.projection\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.conv.'),
        (r'^stages\.(\d+)\.downsample\.norm\.', lambda m: f'stages.{int(m[1]) + 1}.downsample.norm.'),
        (r'\.(spatial|channel)_block\.', r'.\1.'),
        (r'\.attn\.w_msa\.', '.attn.'),
        (r'\.ffn\.layers\.0\.0\.', '.mlp.fc1.'),
        (r'\.ffn\.layers\.1\.', '.mlp.fc2.'),
    ],
}


class LoadReport(NamedTuple):
    format: str
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    outside_prefix: int


def unwrap_checkpoint(checkpoint: dict) -> StateDict:
    """The tensors of a checkpoint saved bare or wrapped in ``state_dict`` / ``model`` (with ``meta``)."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'Expected a checkpoint dict of tensors, got {type(checkpoint).__name__}')
    for wrapper in ('state_dict', 'model'):
        if isinstance(checkpoint.get(wrapper), dict):
            return checkpoint[wrapper]
    return checkpoint


def strip_prefix(state_dict: StateDict, prefix: Union[str, None] = None) -> Tuple[StateDict, int]:
    """Drop ``module.``; keep only ``prefix`` (default ``backbone.`` when present) keys, stripped.

    Returns the backbone state dict and how many keys were outside the prefix (neck, heads, ...).
    """
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return inside, len(state_dict) - len(inside)


def detect_format(state_dict: StateDict) -> str:
    """Name the key format of a (prefix-stripped) DaViT state dict."""
    for name, marker in FORMAT_MARKERS.items():
        if any(re.match(marker, key) for key in state_dict):
            return name
    sample = ', '.join(list(state_dict)[:6]) or '(no keys)'
    raise ValueError(f'Unrecognised checkpoint format: none of the official, timm, mmpretrain or mmdavit DaViT '
                     f'key patterns found. First keys: {sample}. Is this a DaViT checkpoint? If its backbone '
                     f'keys sit under a prefix other than "backbone.", pass init_cfg=dict(..., prefix=...)')


def convert_state_dict(state_dict: StateDict, src_format: str = 'auto') -> Tuple[StateDict, str]:
    """Rename a prefix-stripped DaViT state dict to mmdavit keys. Keys with no mmdavit counterpart
    (classifier head, official ``norms``) pass through unchanged so that loading reports them."""
    if src_format == 'auto':
        src_format = detect_format(state_dict)
    if src_format not in CONVERSION_RULES:
        raise ValueError(f'Unknown checkpoint format {src_format!r}; choose auto, '
                         f'{", ".join(CONVERSION_RULES)}')
    rules = [(re.compile(pattern), repl) for pattern, repl in CONVERSION_RULES[src_format]]
    converted = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        converted[key] = value
    return converted, src_format


def read_checkpoint(path: str) -> dict:
    """``torch.load`` with ``weights_only=True``, turning the usual failures into clear errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'DaViT checkpoint not found: {path}. Get the official or timm DaViT weights (README, '
            f'"Pretrained weights"; any format loads), or train from scratch with '
            f'--cfg-options model.backbone.init_cfg=None')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise ValueError(f'Could not read {path} as a torch checkpoint ({type(error).__name__}: '
                         f'{str(error).splitlines()[0] if str(error) else ""}). Is the file complete, '
                         f'and a .pth/.pt saved by torch.save?') from error


def load_pretrained(model: torch.nn.Module, path: str, prefix: Union[str, None] = None,
                    src_format: str = 'auto') -> LoadReport:
    """Load any supported DaViT checkpoint into ``model`` and log what did and did not load."""
    state_dict, outside = strip_prefix(unwrap_checkpoint(read_checkpoint(path)), prefix)
    state_dict, src_format = convert_state_dict(state_dict, src_format)
    own = model.state_dict()
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f'Shape mismatch for {key}: checkpoint {tuple(value.shape)} vs model '
                             f'{tuple(own[key].shape)}. Does the checkpoint match arch={model.arch}?')
    loadable = {k: v for k, v in state_dict.items() if k in own}
    if not loadable:
        raise ValueError(f'No tensor of {path} matches this DaViT ({src_format} keys, e.g. '
                         f'{", ".join(list(state_dict)[:4])}); is it a checkpoint of another model?')
    model.load_state_dict(loadable, strict=False)
    report = LoadReport(src_format, sorted(loadable), sorted(set(own) - set(state_dict)),
                        sorted(set(state_dict) - set(own)), outside)
    logger = MMLogger.get_current_instance()
    logger.info(f'DaViT: loaded {len(report.loaded)}/{len(own)} tensors from {src_format} checkpoint {path}'
                + (f' ({outside} keys outside the backbone ignored)' if outside else ''))
    if report.missing:
        logger.warning(f'DaViT: missing keys, left at their initial values: {", ".join(report.missing)}')
    if report.unexpected:
        logger.warning(f'DaViT: unexpected keys in the checkpoint, not loaded: {", ".join(report.unexpected)}')
    return report
