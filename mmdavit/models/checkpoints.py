"""Checkpoint files and formats -> mmdavit keys: reading, format detection, conversion, loading with a loud report.

Every format, where it comes from and how to load it by path or by name: ``docs/checkpoint-formats.md``.

Key formats (after the backbone prefix is stripped):
    official      ``patch_embeds.{i}``, ``main_blocks.{s}.{j}.{0|1}``, ``cpe.{0|1}`` (+ ``norms``, ``head``)
    timm          ``stem``, ``stages.{i}.downsample``, ``stages.{s}.blocks.{j}.{0|1}`` (+ ``head``); timm's
                  Florence-2 towers ``davit_*_fl``: ``stages.{s}.blocks.{j}.{spatial|channel}_block``
    mmpretrain    ``patch_embed.projection``, downsample at the *end* of stage i, ``spatial_block``,
                  ``attn.w_msa``, ``ffn.layers``
    florence2     Microsoft's Florence-2 VLM (``vision_tower.`` prefix): ``convs.{s}.proj|norm``,
                  ``blocks.{s}.{j}.{spatial|channel}_block``, ``conv1.fn.dw``, ``window_attn.fn.qkv``, ``ffn.fn.net``
    florence2-transformers  transformers' Florence-2 port (``model.vision_tower.`` prefix): ``convs.{s}.conv``,
                  ``conv1``, ``norm1``, ``window_attn.qkv`` / ``channel_attn.qkv``, ``ffn.fc1``
    mmdavit       ours: ``stem``, ``stages.{i}.downsample``, ``stages.{s}.blocks.{j}.{spatial|channel}``
Any of them may be wrapped in ``state_dict`` / ``model`` and carry a ``backbone.`` (or ``module.``) prefix.

Files: torch pickles (``.pth``, ``.pt``, ``.bin``; read with ``weights_only=True``, so a file that would run
code is refused), ``.safetensors``, sharded checkpoints given by their ``*.index.json``, and
``hf-hub://OWNER/REPO[/FILE]`` names (``mmdavit.models.hub``). Tensors are read on demand, so loading the
vision tower of a multi-GB VLM checkpoint reads only the tower's tensors.
"""
import json
import os
import re
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

import torch
from mmengine.logging import MMLogger
from mmengine.runner import CheckpointLoader

from mmdavit.compat import RefusedCheckpoint, load_torch_file
from mmdavit.engine.checkpointing import MIN_BACKBONE_SHARE, _examples, backbone_share, is_local, replacing
from mmdavit.models.hub import HF_HUB_PREFIX, resolve_hf_hub

StateDict = Dict[str, torch.Tensor]
Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]

FORMAT_MARKERS = {
    'mmdavit': r'^stages\.\d+\.blocks\.\d+\.(spatial|channel)\.',
    # timm's Florence-2 towers name their blocks like mmpretrain (``spatial_block``): their ``stem`` tells.
    'timm': r'^(stages\.\d+\.blocks\.\d+\.[01]|stem\.conv)\.',
    'official': r'^(patch_embeds|main_blocks)\.',
    'mmpretrain': r'^(patch_embed\.projection|stages\.\d+\.blocks\.\d+\.(spatial|channel)_block)\.',
    'florence2': r'^(convs\.\d+\.proj|blocks\.\d+\.\d+\.(spatial|channel)_block\.(conv1\.fn|ffn\.fn))\.',
    'florence2-transformers': r'^(convs\.\d+\.conv|blocks\.\d+\.\d+\.(spatial|channel)_block\.(norm1|ffn\.fc1))\.',
}
# Where the backbone sits in whole-model checkpoints, tried in this order when no prefix is given:
# detectors / segmentors, transformers' Florence2ForConditionalGeneration, Microsoft's Florence-2 VLM.
BACKBONE_PREFIXES = ('backbone.', 'model.vision_tower.', 'vision_tower.')

MMDAVIT_KEY = re.compile(r'^(stem|stages\.\d+\.(downsample|blocks\.\d+\.(spatial|channel))|norm\d+)\.')
# Per-stage output norms: only dense-prediction checkpoints have them (classifiers and VLMs do not).
OUTPUT_NORM = re.compile(r'^norm\d+\.')

_BLOCK_TYPE = {'0': 'spatial', '1': 'channel'}
_FLORENCE2_STEM_AND_DOWNSAMPLE: List[Rule] = [
    (r'^convs\.0\.(proj|conv)\.', 'stem.conv.'),
    (r'^convs\.0\.norm\.', 'stem.norm.'),
    (r'^convs\.(\d+)\.(proj|conv)\.', r'stages.\1.downsample.conv.'),
    (r'^convs\.(\d+)\.norm\.', r'stages.\1.downsample.norm.'),
    (r'^blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.', r'stages.\1.blocks.\2.\3.'),
]
CONVERSION_RULES: Dict[str, List[Rule]] = {
    'mmdavit': [],
    'timm': [
        (r'^stages\.(\d+)\.blocks\.(\d+)\.([01])\.', lambda m: f'stages.{m[1]}.blocks.{m[2]}.{_BLOCK_TYPE[m[3]]}.'),
        (r'^stages\.(\d+)\.blocks\.(\d+)\.(spatial|channel)_block\.', r'stages.\1.blocks.\2.\3.'),  # davit_*_fl
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
    # Each sub-layer is wrapped (PreNorm: ``norm`` + ``fn``; ConvPosEnc: ``fn.dw``; Mlp: ``fn.net``).
    'florence2': _FLORENCE2_STEM_AND_DOWNSAMPLE + [
        (r'\.conv1\.fn\.dw\.', '.cpe1.proj.'),
        (r'\.conv2\.fn\.dw\.', '.cpe2.proj.'),
        (r'\.(window|channel)_attn\.norm\.', '.norm1.'),
        (r'\.(window|channel)_attn\.fn\.', '.attn.'),
        (r'\.ffn\.norm\.', '.norm2.'),
        (r'\.ffn\.fn\.net\.', '.mlp.'),
    ],
    'florence2-transformers': _FLORENCE2_STEM_AND_DOWNSAMPLE + [
        (r'\.conv1\.', '.cpe1.proj.'),
        (r'\.conv2\.', '.cpe2.proj.'),
        (r'\.(window|channel)_attn\.', '.attn.'),
        (r'\.ffn\.', '.mlp.'),
    ],
}


class LoadReport(NamedTuple):
    format: str
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    outside_prefix: int
    fresh: List[str] = []  # output norms the checkpoint has none of (classifier / VLM checkpoints): new layers


# ---------------------------------------------------------------------------------------------------------
# Files: tensors read on demand
# ---------------------------------------------------------------------------------------------------------

class CheckpointFile:
    """The tensors of a checkpoint, listed by name (and shape, on demand) before any is read."""
    path: str

    def keys(self) -> List[str]:
        raise NotImplementedError

    def shape(self, key: str) -> Tuple[int, ...]:
        raise NotImplementedError

    def read(self, keys: Iterable[str]) -> StateDict:
        raise NotImplementedError


class SafetensorsFile(CheckpointFile):
    """A ``.safetensors`` file: its header lists names and shapes; each tensor is read alone."""

    def __init__(self, path: str):
        from safetensors import safe_open
        try:
            with safe_open(path, framework='pt', device='cpu') as f:
                self.shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        except Exception as error:  # safetensors raises its own error type, OSError and others
            raise ValueError(f'Could not read {path} as a safetensors file ({type(error).__name__}: '
                             f'{_first_line(error)}). Is the file complete (an interrupted download?)') from error
        self.path = path

    def keys(self) -> List[str]:
        return list(self.shapes)

    def shape(self, key: str) -> Tuple[int, ...]:
        return self.shapes[key]

    def read(self, keys: Iterable[str]) -> StateDict:
        from safetensors import safe_open
        with safe_open(self.path, framework='pt', device='cpu') as f:
            return {key: f.get_tensor(key) for key in keys}


class LoadedCheckpoint(CheckpointFile):
    """A checkpoint already loaded (its tensors in memory or memory-mapped), e.g. by a ``CheckpointLoader``
    scheme: the tensors of its state dict, unwrapped."""

    def __init__(self, path: str, checkpoint: object):
        self.path = path
        self.checkpoint = checkpoint
        self.tensors = {k: v for k, v in unwrap_checkpoint(checkpoint).items() if isinstance(v, torch.Tensor)}
        if not self.tensors:
            raise ValueError(f'{path} holds no tensors: is it a model checkpoint?')

    def keys(self) -> List[str]:
        return list(self.tensors)

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def read(self, keys: Iterable[str]) -> StateDict:
        return {key: self.tensors[key] for key in keys}


class TorchFile(LoadedCheckpoint):
    """A ``torch.save`` file, read without running code from it and memory-mapped where torch can (zip
    format), so tensors that are never used are never read from disk."""

    def __init__(self, path: str):
        super().__init__(path, torch_load(path))


class ShardedCheckpoint(CheckpointFile):
    """A checkpoint split into shards (safetensors or torch files) named by a ``*.index.json`` file
    (``{"weight_map": {tensor name: shard file}}``); shards lie next to the index. The names come from the
    index alone; a shard is opened only when one of its tensors is asked for, so the shards that hold no
    backbone tensor (a VLM's language model) are never opened: missing or damaged, they do not matter."""

    def __init__(self, index_path: str):
        try:
            with open(index_path) as f:
                weight_map = json.load(f)['weight_map']
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError('weight_map is not a mapping from tensor names to shard file names')
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f'{index_path} is not a sharded-checkpoint index (a JSON file with a "weight_map" '
                             f'from tensor names to shard files): {type(error).__name__}: {error}') from error
        self.path = index_path
        self.folder = os.path.dirname(index_path)
        self.shard_of = {key: os.path.join(self.folder, shard) for key, shard in weight_map.items()}
        self.shards: Dict[str, CheckpointFile] = {}

    def keys(self) -> List[str]:
        return list(self.shard_of)

    def _shard(self, shard: str) -> CheckpointFile:
        if shard not in self.shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f'Shard {os.path.basename(shard)} listed in {self.path} is missing: the '
                                        f'shards must lie next to their index file ({self.folder or "."})')
            opened = open_file(shard)
            held = set(opened.keys())
            absent = [k for k, s in self.shard_of.items() if s == shard and k not in held]
            if absent:
                raise ValueError(f'{self.path} maps {len(absent)} tensors to shards that do not hold them (e.g. '
                                 f'{absent[0]} in {os.path.basename(shard)}): index and shards are from different '
                                 f'checkpoints')
            self.shards[shard] = opened
        return self.shards[shard]

    def shape(self, key: str) -> Tuple[int, ...]:
        return self._shard(self.shard_of[key]).shape(key)

    def read(self, keys: Iterable[str]) -> StateDict:
        by_shard: Dict[str, List[str]] = {}
        for key in keys:
            by_shard.setdefault(self.shard_of[key], []).append(key)
        tensors = {}
        for shard, shard_keys in by_shard.items():
            tensors.update(self._shard(shard).read(shard_keys))
        return tensors


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ''


def one_line(error: Exception) -> str:
    """An error's message on one line (for command-line tools: ``error: ...``, no traceback)."""
    return ' '.join(line.strip() for line in str(error).splitlines() if line.strip())


def torch_load(path: str, mmap: bool = True, map_location='cpu') -> object:
    """A torch file read without running code from it (:func:`mmdavit.compat.load_torch_file`; memory-mapped
    when the file allows), with errors that name the file and the likely cause."""
    try:
        try:
            return load_torch_file(path, map_location, mmap=mmap)
        except RuntimeError as error:  # files in torch's legacy (pre-zip) format cannot be memory-mapped
            if not mmap or 'mmap' not in str(error):
                raise
            return load_torch_file(path, map_location)
    except RefusedCheckpoint:
        raise
    except Exception as error:  # torch raises several types for truncated / foreign files
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ValueError(f'Could not read {path} as a torch checkpoint ({type(error).__name__}: '
                         f'{lines[0] if lines else ""}). Is the file complete, and a .pth/.pt/.bin saved by '
                         f'torch.save (or a .safetensors file)?') from error


CHECKPOINT_SUFFIXES = ('.safetensors', '.index.json', '.pth', '.pt', '.bin', '.ckpt', '.pth.tar')


def open_file(path: str) -> CheckpointFile:
    """Open a local checkpoint file of any supported kind: ``*.index.json`` (sharded), safetensors (by its
    name or its header), otherwise a torch file."""
    if os.path.isdir(path):
        inside = sorted(name for name in os.listdir(path) if name.endswith(CHECKPOINT_SUFFIXES))
        hint = (f'pass one of the checkpoint files in it: {", ".join(inside[:6])}' if inside
                else 'it holds no checkpoint file (.safetensors, .pth, .bin, *.index.json)')
        raise IsADirectoryError(f'DaViT checkpoint {path} is a directory, not a file: {hint}')
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'DaViT checkpoint not found: {path}. Load weights by name (e.g. '
            f'checkpoint="{HF_HUB_PREFIX}timm/davit_tiny.msft_in1k") or get a file in any supported format '
            f'(README, "Pretrained weights"), or train from scratch with '
            f'--cfg-options model.backbone.init_cfg=None')
    if path.endswith('.json'):
        return ShardedCheckpoint(path)
    if path.endswith('.safetensors') or _looks_like_safetensors(path):
        return SafetensorsFile(path)
    return TorchFile(path)


def _looks_like_safetensors(path: str) -> bool:
    """A safetensors file starts with the 8-byte length of its JSON header, then ``{``."""
    with open(path, 'rb') as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b'{' and not head.startswith(b'PK')


def open_checkpoint(path: str) -> CheckpointFile:
    """A local path (``~`` expanded) or an ``hf-hub://`` name -> its tensors, readable on demand; a name with
    another scheme (``https://``, ``s3://``, ``open-mmlab://`` ...) -> the checkpoint mmengine's
    ``CheckpointLoader`` loads for it."""
    if path.startswith(HF_HUB_PREFIX):
        return open_file(resolve_hf_hub(path))
    if not is_local(path):
        return LoadedCheckpoint(path, load_by_scheme(path))
    return open_file(os.path.expanduser(path))


def _scheme_names() -> List[str]:
    """The schemes registered with mmengine's ``CheckpointLoader``, as a user writes them (``s3://``)."""
    names = {re.sub(r'^\(\\S\+\\:\)\?', '', prefix) for prefix in CheckpointLoader._schemes}
    return sorted(name for name in names if re.fullmatch(r'[\w.+-]+://', name))


def load_by_scheme(path: str) -> object:
    """The checkpoint that mmengine's ``CheckpointLoader`` loads for ``path`` (a name with a scheme), read on the
    CPU; errors name the address. A scheme no loader knows is not taken for a local file."""
    if CheckpointLoader._get_checkpoint_loader(path) is CheckpointLoader._schemes.get(''):  # the local fallback
        raise ValueError(f'{path}: no checkpoint loader knows its scheme {path.split("://")[0]}://. Give a local '
                         f'path, or a name with one of the schemes of mmengine\'s CheckpointLoader: '
                         f'{", ".join(_scheme_names())}')
    try:
        return CheckpointLoader.load_checkpoint(path, map_location='cpu')
    except (FileNotFoundError, ValueError):  # the loaders' own errors name the file and the cause
        raise
    except Exception as error:  # network, storage-backend and import errors of each scheme
        raise ValueError(f'Could not load checkpoint {path} ({type(error).__name__}: {_first_line(error)}). Is the '
                         f'address right and reachable, and does it hold a torch.save checkpoint?') from error


def read_checkpoint(path: str) -> StateDict:
    """All tensors of a checkpoint (any supported file, or an ``hf-hub://`` name), unwrapped."""
    source = open_checkpoint(path)
    return source.read(source.keys())


def load_checkpoint_file(path: str, map_location=None) -> dict:
    """A checkpoint as stored, for mmengine's ``load_checkpoint`` (``load_from``, resume, ``--checkpoint``): a
    torch file's whole content (``meta`` included; read whole, not memory-mapped, as a runner keeps it), or the
    tensors of a safetensors / sharded checkpoint."""
    if not path.endswith('.json') and not path.endswith('.safetensors') and not _looks_like_safetensors(path):
        return torch_load(path, mmap=False, map_location=map_location)
    source = open_file(path)
    checkpoint = source.read(source.keys())
    if map_location is None or str(map_location) == 'cpu':
        return checkpoint
    if not isinstance(map_location, (str, torch.device)):
        raise ValueError(f'map_location must be a device name for {path}, got {map_location!r}')
    return _to_device(checkpoint, map_location)


# mmengine reads local files and URLs with a plain torch.load, which runs a file's code on torch < 2.6 and
# refuses mmengine's own types on newer torch. These schemes read them through load_torch_file on every torch,
# and let ``load_from`` / ``--checkpoint`` take a local safetensors file or sharded index too.
@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None) -> dict:
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return load_checkpoint_file(filename, map_location)


@CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), force=True)
def load_from_http(filename: str, map_location=None, model_dir: Optional[str] = None, progress: bool = True) -> dict:
    """mmengine's URL loading (download once into torch's hub cache, rank 0 first), read safely."""
    from urllib.parse import urlparse

    from mmengine.dist import barrier, get_dist_info
    folder = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    cached = os.path.join(folder, os.path.basename(urlparse(filename).path))

    def download():
        if not os.path.isfile(cached):
            os.makedirs(folder, exist_ok=True)
            torch.hub.download_url_to_file(filename, cached, progress=progress)

    rank, world_size = get_dist_info()
    if rank == 0:
        download()
    if world_size > 1:
        barrier()
        download()  # nothing to do where the ranks share rank 0's cache
    return load_checkpoint_file(cached, map_location)


def check_destination(dst: str) -> str:
    """Where a converter writes: ``dst`` with ``~`` expanded, or one clear error for a name it cannot write."""
    if not dst:
        raise ValueError('DST is empty: give the converted checkpoint a file name, e.g. checkpoints/davit.pth')
    dst = os.path.expanduser(dst)
    if os.path.isdir(dst):
        raise IsADirectoryError(f'{dst} is a directory, not a file: give the converted checkpoint a file name, '
                                f'e.g. {os.path.join(dst, "davit.pth")}')
    folder = os.path.dirname(dst) or '.'
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{dst}: the folder {folder} does not exist; create it first (mkdir -p {folder})')
    return dst


def write_checkpoint(state_dict: StateDict, dst: str, meta: dict) -> None:
    """Save converted weights: ``.safetensors`` (``meta`` as its string metadata) or else ``torch.save`` of
    ``{'state_dict', 'meta'}``. Written to a temporary file beside ``dst`` and renamed onto it when complete:
    the source may be ``dst`` itself, still being read (memory-mapped), and a failed write leaves ``dst`` as
    it was. Any failure is an ``OSError`` naming ``dst``."""
    try:
        with replacing(dst) as temporary:
            if dst.endswith('.safetensors'):
                from safetensors.torch import save_file
                save_file({k: v.contiguous() for k, v in state_dict.items()}, temporary,
                          metadata={k: str(v) for k, v in meta.items()})
            else:
                torch.save({'state_dict': state_dict, 'meta': meta}, temporary)
    except Exception as error:  # torch, safetensors and the OS each raise their own type
        raise OSError(f'could not write {dst} ({type(error).__name__}: {_first_line(error)})') from error


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return type(value)((k, _to_device(v, device)) for k, v in value.items())
    return value


# ---------------------------------------------------------------------------------------------------------
# Key formats
# ---------------------------------------------------------------------------------------------------------

def unwrap_checkpoint(checkpoint: dict) -> StateDict:
    """The tensors of a checkpoint saved bare or wrapped in ``state_dict`` / ``model`` (with ``meta``)."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f'Expected a checkpoint dict of tensors, got {type(checkpoint).__name__}')
    for wrapper in ('state_dict', 'model'):
        if isinstance(checkpoint.get(wrapper), dict):
            return checkpoint[wrapper]
    return checkpoint


def backbone_keys(keys: Iterable[str], prefix: Optional[str] = None) -> Tuple[Dict[str, str], int, str]:
    """Drop ``module.``; keep the keys under ``prefix`` (default: the first of ``BACKBONE_PREFIXES`` present).

    Returns {backbone key without prefix: key in the checkpoint}, how many keys lie outside the prefix (neck,
    heads, a VLM's language model...), and the prefix used.
    """
    unwrapped: Dict[str, str] = {}
    for key in keys:
        bare = key[len('module.'):] if key.startswith('module.') else key
        if bare in unwrapped:
            raise ValueError(f'Ambiguous checkpoint: it holds both {unwrapped[bare]} and {key}, two copies of one '
                             'weight (with and without the "module." of a DataParallel wrapper); which is meant is '
                             'unclear. Save a checkpoint with one copy of each weight')
        unwrapped[bare] = key
    if prefix is None:
        prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in unwrapped)), '')
    if prefix and not prefix.endswith('.'):
        prefix += '.'
    inside = {k[len(prefix):]: original for k, original in unwrapped.items() if k.startswith(prefix)}
    return inside, len(unwrapped) - len(inside), prefix


def strip_prefix(state_dict: StateDict, prefix: Union[str, None] = None) -> Tuple[StateDict, int]:
    """:func:`backbone_keys` on a state dict: the backbone's tensors and the count of keys outside it."""
    inside, outside, _ = backbone_keys(state_dict, prefix)
    return {k: state_dict[original] for k, original in inside.items()}, outside


def detect_format(state_dict: Iterable[str]) -> str:
    """Name the key format of a (prefix-stripped) DaViT state dict or list of its keys."""
    keys = list(state_dict)
    for name, marker in FORMAT_MARKERS.items():
        if any(re.match(marker, key) for key in keys):
            return name
    sample = ', '.join(keys[:6]) or '(no keys)'
    raise ValueError(f'Unrecognised checkpoint format: none of the {", ".join(FORMAT_MARKERS)} DaViT key '
                     f'patterns found. First keys: {sample}. Is this a DaViT checkpoint? If its backbone keys '
                     f'sit under a prefix other than {", ".join(BACKBONE_PREFIXES)}, pass '
                     f'init_cfg=dict(..., prefix=...)')


def convert_keys(keys: Iterable[str], src_format: str = 'auto') -> Tuple[Dict[str, str], str]:
    """{key: mmdavit key} for prefix-stripped DaViT keys. Keys with no mmdavit counterpart (classifier head,
    official ``norms``) keep their names so that loading reports them."""
    keys = list(keys)
    if src_format == 'auto':
        src_format = detect_format(keys)
    if src_format not in CONVERSION_RULES:
        raise ValueError(f'Unknown checkpoint format {src_format!r}; choose auto, '
                         f'{", ".join(CONVERSION_RULES)}')
    rules = [(re.compile(pattern), repl) for pattern, repl in CONVERSION_RULES[src_format]]
    renamed = {}
    for key in keys:
        new = key
        for pattern, repl in rules:
            new = pattern.sub(repl, new)
        renamed[key] = new
    if len(set(renamed.values())) < len(renamed):
        first = {}
        for key, new in renamed.items():
            if new in first:
                raise ValueError(f'Ambiguous checkpoint: {first[new]} and {key} are both {new} after {src_format} '
                                 'conversion; which is meant is unclear. Save a checkpoint with one copy of each '
                                 'weight')
            first[new] = key
    return renamed, src_format


def convert_state_dict(state_dict: StateDict, src_format: str = 'auto') -> Tuple[StateDict, str]:
    """Rename a prefix-stripped DaViT state dict to mmdavit keys (see :func:`convert_keys`)."""
    renamed, src_format = convert_keys(state_dict, src_format)
    return {renamed[k]: v for k, v in state_dict.items()}, src_format


# ---------------------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------------------

def load_pretrained(model: torch.nn.Module, path: str, prefix: Union[str, None] = None,
                    src_format: str = 'auto', allow_partial: bool = False) -> LoadReport:
    """Load any supported DaViT checkpoint (a path, an ``hf-hub://`` name or a URL) into ``model``, reading
    only the tensors it takes, and log what did and did not load.

    A checkpoint that gives the model less than ``MIN_BACKBONE_SHARE`` of its weights (by element count, as
    ``load_from`` counts) is refused, unless ``allow_partial`` (``init_cfg=dict(..., allow_partial=True)``):
    then it loads with the usual report and the rest keeps its initial values."""
    source = open_checkpoint(path)
    inside, outside, prefix = backbone_keys(source.keys(), prefix)
    renamed, src_format = convert_keys(inside, src_format)
    source_key = {new: inside[old] for old, new in renamed.items()}  # mmdavit key -> key in the file
    own = model.state_dict()
    for key, original in source_key.items():
        if key in own and tuple(own[key].shape) != source.shape(original):
            raise ValueError(f'Shape mismatch for {key}: checkpoint {source.shape(original)} vs model '
                             f'{tuple(own[key].shape)}. Does the checkpoint match arch={model.arch}?'
                             + _florence_hint(key, source.shape(original), tuple(own[key].shape)))
    loadable = sorted(k for k in source_key if k in own)
    if not loadable:
        raise ValueError(f'No tensor of {path} matches this DaViT ({src_format} keys, e.g. '
                         f'{", ".join(list(source_key)[:4])}); is it a checkpoint of another model?')
    share = backbone_share(own, loadable)
    if share < MIN_BACKBONE_SHARE and not allow_partial:
        left = [k for k in own if k not in source_key]
        raise ValueError(f'{path} would give this DaViT (arch={model.arch}) only {share:.1%} of its weights '
                         f'({len(loadable)} of {len(own)} tensors; not in it: {_examples(left)}): is it a '
                         'checkpoint of another arch or model? Use weights of this arch; or, to load it anyway '
                         'and keep the rest at their initial values, add allow_partial=True to the Pretrained '
                         'init_cfg')
    tensors = source.read(source_key[k] for k in loadable)
    for key in loadable:
        tensor = tensors[source_key[key]]
        if own[key].is_floating_point() and not tensor.is_floating_point():
            raise ValueError(f'{source_key[key]} in {path} is a {str(tensor.dtype).replace("torch.", "")} tensor, '
                             f'but {key} is a floating-point weight: a quantised (or otherwise non-float) '
                             'checkpoint is not DaViT weights. Use the floating-point checkpoint')
    model.load_state_dict({k: tensors[source_key[k]] for k in loadable}, strict=False)
    missing = sorted(set(own) - set(source_key))
    has_output_norms = any(OUTPUT_NORM.match(k) for k in source_key)
    fresh = [] if has_output_norms else [k for k in missing if OUTPUT_NORM.match(k)]
    report = LoadReport(src_format, loadable, [k for k in missing if k not in fresh],
                        sorted(set(source_key) - set(own)), outside, fresh)
    _log_report(report, path, len(own), prefix)
    return report


def _florence_hint(key: str, checkpoint_shape: tuple, model_shape: tuple) -> str:
    if key.endswith('downsample.conv.weight') and checkpoint_shape[2:] == (3, 3) and model_shape[2:] == (2, 2):
        return (" The checkpoint's downsampling convs are 3x3: a Florence-2 tower (arch='florence2-base' or "
                "'florence2-large')")
    return ''


def _log_report(report: LoadReport, path: str, total: int, prefix: str) -> None:
    logger = MMLogger.get_current_instance()
    message = f'DaViT: loaded {len(report.loaded)}/{total} tensors from {report.format} checkpoint {path}'
    if report.outside_prefix:
        message += f'; {report.outside_prefix} keys outside "{prefix}" dropped (not part of the backbone)'
    if report.fresh:
        message += (f'; output norms {", ".join(sorted({k.split(".")[0] for k in report.fresh}))} freshly '
                    f'initialised (the checkpoint has none: classifier and VLM checkpoints end without them)')
    logger.info(message)
    if report.missing:
        logger.warning(f'DaViT: missing keys, left at their initial values: {", ".join(report.missing)}')
    if report.unexpected:
        logger.warning(f'DaViT: unexpected keys in the checkpoint, not loaded: {", ".join(report.unexpected)}')
