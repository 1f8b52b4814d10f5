#!/usr/bin/env python
"""Peak memory of loading a Florence-2 vision tower out of a large VLM checkpoint (only the tower is read).

Writes a synthetic Florence-2-like checkpoint: a florence2-base tower (random weights under the VLM's
``vision_tower.`` names) plus large zero "language model" tensors, ~2 GB in all (as Florence-2-large's hub file,
in float16 as published). Then, each in a fresh process, measures the peak resident memory above the process's
state just before the call (``VmHWM`` reset through ``/proc/self/clear_refs``) of:

* ``load_pretrained(DaViT('florence2-base'), FILE)``: what mmdavit does;
* reading the whole file (``safetensors.torch.load_file`` / ``torch.load``) and using each tensor once: what a
  loader that does not select does.

    python tools/analysis/checkpoint_memory.py [--size-gb 2] [--formats safetensors bin] [--dir /tmp] [--keep]

Linux only (``/proc``). The files are deleted afterwards unless ``--keep``.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

import torch

CHUNK = 64 << 20
DTYPE_NAMES = {torch.float16: 'F16', torch.bfloat16: 'BF16', torch.float32: 'F32'}
# mmdavit block sub-layers -> Microsoft's Florence-2 names ({attn}: window_attn or channel_attn).
FLORENCE2_SUBLAYERS = {'cpe1.proj': 'conv1.fn.dw', 'norm1': '{attn}.norm', 'attn': '{attn}.fn',
                       'cpe2.proj': 'conv2.fn.dw', 'norm2': 'ffn.norm', 'mlp': 'ffn.fn.net'}


def florence2_name(key: str) -> str:
    """An mmdavit backbone key under the Florence-2 VLM's name (``vision_tower.`` prefix)."""
    key = re.sub(r'^stem\.(conv|norm)\.', lambda m: f'convs.0.{"proj" if m[1] == "conv" else "norm"}.', key)
    key = re.sub(r'^stages\.(\d+)\.downsample\.(conv|norm)\.',
                 lambda m: f'convs.{m[1]}.{"proj" if m[2] == "conv" else "norm"}.', key)
    block = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(spatial|channel)\.(.*)$', key)
    if block:
        attn = 'window_attn' if block[3] == 'spatial' else 'channel_attn'
        rest = block[4]
        for name, new in FLORENCE2_SUBLAYERS.items():
            if rest.startswith(name + '.'):
                rest = new.format(attn=attn) + rest[len(name):]
                break
        key = f'blocks.{block[1]}.{block[2]}.{block[3]}_block.{rest}'
    return 'vision_tower.' + key


def tower_tensors(dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    from mmdavit.models import DaViT
    model = DaViT(arch='florence2-base')
    return {florence2_name(k): v.to(dtype) for k, v in model.state_dict().items() if not k.startswith('norm')}


def language_model_shapes(total_bytes: int, itemsize: int) -> List[Tuple[str, Tuple[int, ...]]]:
    shape = (4096, CHUNK // (4096 * itemsize))
    count = max(1, total_bytes // CHUNK)
    return [(f'language_model.model.encoder.layers.{i}.fc1.weight', shape) for i in range(count)]


def write_safetensors(path: str, tower: Dict[str, torch.Tensor], filler: List[Tuple[str, Tuple[int, ...]]],
                      dtype: torch.dtype) -> None:
    """Stream a safetensors file (header, then data) without holding the zero tensors in memory."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    entries, offset = {}, 0
    sizes = {name: tensor.numel() * itemsize for name, tensor in tower.items()}
    sizes.update({name: int(torch.Size(shape).numel()) * itemsize for name, shape in filler})
    shapes = {**{n: list(t.shape) for n, t in tower.items()}, **{n: list(s) for n, s in filler}}
    for name in sorted(sizes):
        entries[name] = {'dtype': DTYPE_NAMES[dtype], 'shape': shapes[name],
                         'data_offsets': [offset, offset + sizes[name]]}
        offset += sizes[name]
    header = json.dumps(entries).encode()
    header += b' ' * (-len(header) % 8)
    zeros = bytes(CHUNK)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(header)) + header)
        for name in sorted(sizes):
            if name in tower:
                f.write(tower[name].contiguous().view(torch.uint8).numpy().tobytes())
            else:
                for start in range(0, sizes[name], CHUNK):
                    f.write(zeros[:min(CHUNK, sizes[name] - start)])


def write_torch(path: str, tower: Dict[str, torch.Tensor], filler: List[Tuple[str, Tuple[int, ...]]],
                dtype: torch.dtype) -> None:
    state = dict(tower)
    state.update({name: torch.zeros(shape, dtype=dtype) for name, shape in filler})
    torch.save(state, path)


def memory_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def measure(path: str, what: str) -> dict:
    """Run in a fresh process: peak RSS above the state just before loading."""
    torch.set_num_threads(1)
    from mmdavit.models import DaViT, load_pretrained
    model = DaViT(arch='florence2-base') if what == 'mmdavit' else None
    before = memory_kb('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM (peak RSS) to the current RSS
    if what == 'mmdavit':
        report = load_pretrained(model, path)
        loaded = len(report.loaded)
    else:  # every tensor used once, as loading them all into a model would (safetensors maps lazily)
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            tensors = load_file(path)
        else:
            tensors = torch.load(path, map_location='cpu', weights_only=True)
        loaded = sum(1 for t in tensors.values() if t.float().sum() is not None)
    return dict(peak_delta_mb=(memory_kb('VmHWM') - before) / 1024, tensors=loaded)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size-gb', type=float, default=2.0, help='approximate file size (default 2)')
    parser.add_argument('--formats', nargs='+', default=['safetensors', 'bin'], choices=['safetensors', 'bin'])
    parser.add_argument('--dtype', default='float16', choices=['float16', 'bfloat16', 'float32'])
    parser.add_argument('--dir', default=tempfile.gettempdir(), help='where to write the files')
    parser.add_argument('--keep', action='store_true', help='keep the files')
    parser.add_argument('--measure', nargs=2, metavar=('FILE', 'WHAT'), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0

    dtype = getattr(torch, args.dtype)
    tower = tower_tensors(dtype)
    tower_mb = sum(t.numel() * t.element_size() for t in tower.values()) / 2**20
    itemsize = torch.empty(0, dtype=dtype).element_size()
    filler = language_model_shapes(int(args.size_gb * 2**30) - int(tower_mb * 2**20), itemsize)
    print(f'florence2-base tower: {len(tower)} tensors, {tower_mb:.0f} MB in {args.dtype} '
          f'({sum(t.numel() for t in tower.values()):,} parameters; the fp32 model itself is '
          f'{sum(t.numel() for t in tower.values()) * 4 / 2**20:.0f} MB)')
    for fmt in args.formats:
        path = os.path.join(args.dir, f'mmdavit_vlm_memory.{"safetensors" if fmt == "safetensors" else "bin"}')
        (write_safetensors if fmt == 'safetensors' else write_torch)(path, tower, filler, dtype)
        size_mb = os.path.getsize(path) / 2**20
        try:
            for what in ('mmdavit', 'whole file'):
                out = subprocess.run([sys.executable, __file__, '--measure', path, what], capture_output=True,
                                     text=True, check=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(f'{fmt:11s} file {size_mb:6.0f} MB | {what:10s}: peak RSS +{result["peak_delta_mb"]:6.0f} MB '
                      f'({result["tensors"]} tensors read)')
        finally:
            if not args.keep:
                os.remove(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
