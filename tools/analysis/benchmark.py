#!/usr/bin/env python
"""Time the mmdavit DaViT backbone against timm's DaViT, mmpretrain's DaViT and mmdet's Swin-T.

    python tools/analysis/benchmark.py                       # 1x3x800x1344, CPU, 1 warm-up + 5 reps
    python tools/analysis/benchmark.py --device cuda --reps 20 --json bench.json
    python tools/analysis/benchmark.py --threads 1 --skip bf16,scale   # quicker, steadier on a busy CPU

One process, one run: every repetition runs each model once per measurement, round-robin, starting
from a different model each time, and ratios are taken within a repetition before the median over
repetitions, so that load from other jobs on a shared machine hits all models alike.

Measured per model: forward (eval, no grad) and forward+backward (train mode, loss = sum of the
output means) wall time; peak memory in one untimed call per step after the timing (CUDA:
``max_memory_allocated``; CPU: the peak of the tensor storages the call creates and holds at once,
tracked op by op, i.e. tracemalloc for tensors); FLOPs by ``torch.utils.flop_counter`` (matmul, conv
and attention; 2 per MAC), set against a fp32 2048x2048 matmul timed in the same process.
Extra rows: ours with ``with_cp=True`` (train), ours at twice the side (pixel scaling; forward, and
forward+backward with ``--scale-train``) and bf16 autocast inference. Ours and timm share weights
(timm's random init, converted), and the script checks that their features agree.
"""
import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import weakref
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from mmdavit.models import DaViT, convert_state_dict
from mmdavit.models.davit import ARCH_ALIASES

OURS = 'ours'
MATMUL_SIZE = 2048
EXTRAS = ('cp', 'scale', 'bf16')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1344), metavar=('H', 'W'),
                        help='input height and width (default 800 1344)')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default 1)')
    parser.add_argument('--arch', default='tiny', help='DaViT arch for ours, timm and mmpretrain (default tiny)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i] (default cpu)')
    parser.add_argument('--reps', type=int, default=5, help='timed repetitions (default 5)')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed repetitions first; the first one also counts FLOPs (default 1)')
    parser.add_argument('--models', default='ours,timm,mmpretrain,swin',
                        help='comma-separated subset of ours,timm,mmpretrain,swin (ours is always run)')
    parser.add_argument('--skip', default='', help=f'comma-separated extras to skip: {",".join(EXTRAS)}')
    parser.add_argument('--scale', type=float, default=2.0,
                        help='side multiplier of the pixel-scaling row (default 2: 800 -> 1600)')
    parser.add_argument('--scale-train', action='store_true',
                        help='also time forward+backward at the scaled size (about 4x the memory)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch intra-op threads (default: torch\'s default for this machine)')
    parser.add_argument('--json', metavar='OUT', help='also write every measurement to this JSON file')
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(',') if m]
    unknown = set(args.models) - {'ours', 'timm', 'mmpretrain', 'swin'}
    if unknown:
        parser.error(f'unknown --models {sorted(unknown)}; choose from ours, timm, mmpretrain, swin')
    if OURS not in args.models:
        args.models.insert(0, OURS)
    args.skip = {s for s in args.skip.split(',') if s}
    if args.skip - set(EXTRAS):
        parser.error(f'unknown --skip {sorted(args.skip - set(EXTRAS))}; choose from {", ".join(EXTRAS)}')
    return args


# ----------------------------------------------------------------------------------------------- models
# timm's names for our archs where they are not davit_{arch}: the Florence-2 towers.
TIMM_NAMES = {'florence2-base': 'davit_base_fl', 'florence2-large': 'davit_huge_fl'}


def timm_name(full_arch: str) -> str:
    return TIMM_NAMES.get(full_arch, f'davit_{full_arch}')


def build_models(arch: str, names: List[str], skip: set) -> Dict[str, nn.Module]:
    """All models with drop path 0. Ours gets timm's random weights; ours+cp gets ours'."""
    import timm
    full = ARCH_ALIASES.get(arch.lower(), arch.lower())
    timm_model = timm.create_model(timm_name(full), pretrained=False, features_only=True, drop_path_rate=0.0)
    # FeatureListNet flattens ``stages.0`` to ``stages_0``; undo that before converting to our keys.
    timm_state = {re.sub(r'^stages_(\d+)\.', r'stages.\1.', k): v for k, v in timm_model.state_dict().items()}
    state, _ = convert_state_dict(timm_state, 'timm')
    ours = DaViT(full, out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith('norm') for k in missing):
        raise RuntimeError(f'timm -> ours weight transfer failed: missing {missing}, unexpected {unexpected}')
    models = {OURS: ours}
    if 'cp' not in skip:
        models['ours+cp'] = DaViT(full, out_indices=(0, 1, 2, 3), drop_path_rate=0.0, with_cp=True)
        models['ours+cp'].load_state_dict(ours.state_dict())
    if 'timm' in names:
        models['timm'] = timm_model
    if 'mmpretrain' in names and full in TIMM_NAMES:
        print(f'mmpretrain has no {full} (its DaViT has the classic blocks only): not compared', file=sys.stderr)
    elif 'mmpretrain' in names:
        from mmpretrain.models.backbones import DaViT as MMPretrainDaViT
        models['mmpretrain'] = MMPretrainDaViT(arch=full, out_indices=(0, 1, 2, 3), drop_path_rate=0.0,
                                               pad_small_map=True)  # only matters below 7x7 maps
    if 'swin' in names:
        from mmdet.models.backbones import SwinTransformer
        models['swin'] = SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                         window_size=7, out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    return models


LABELS = {
    OURS: 'ours (mmdavit DaViT-{a})',
    'timm': 'timm {t} (features_only)',
    'mmpretrain': 'mmpretrain DaViT-{a}',
    'swin': 'mmdet SwinTransformer-T (2,2,6,2)',
    'ours+cp': 'ours, with_cp=True',
    'ours@scale': 'ours at {h}x{w}',
}


def check_same_numbers(models: Dict[str, nn.Module], images: torch.Tensor) -> Optional[float]:
    """Max abs difference between our features and timm's (through our output norms) on ``images``."""
    if 'timm' not in models:
        return None
    ours = models[OURS].eval()
    with torch.no_grad():
        feats = models['timm'].eval()(images)
        expected = [getattr(ours, f'norm{i}')(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for i, f in enumerate(feats)]
        return max((a - e).abs().max().item() for a, e in zip(ours(images), expected))


# ------------------------------------------------------------------------------------------- measuring
def synchronize(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def forward_step(model: nn.Module, images: torch.Tensor, bf16: bool = False):
    model.eval()
    with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        model(images)


def train_step(model: nn.Module, images: torch.Tensor):
    model.train()
    model.zero_grad(set_to_none=True)
    loss = sum(out.float().mean() for out in model(images))
    loss.backward()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def matmul_gflops(device: torch.device, dtype: torch.dtype, runs: int = 5) -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype)
    a @ b
    seconds = statistics.median(timed(lambda: a @ b, device) for _ in range(runs))
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of ``fn`` (matmul, conv, attention; 2 per MAC), run once under torch's FlopCounterMode, which
    knows the CUDA fused-attention kernels but not the CPU one: add that."""
    aten = torch.ops.aten
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    })
    with counter:
        fn()
    return counter.get_total_flops()


class TensorMemoryPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages created while active and still alive (tracemalloc for tensors):
    every op output whose storage is new is counted until its storage is freed. Views and in-place results
    share an input's storage and are not counted; kernel-internal scratch memory is not seen."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.owned: Dict[int, int] = {}

    def _free(self, ptr: int):
        self.live -= self.owned.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if size and ptr not in inputs and ptr not in self.owned:
                self.owned[ptr] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, ptr)
        return out


def peak_memory_mb(fn: Callable[[], None], device: torch.device) -> float:
    """Peak memory of one call above what was allocated before it, in MB (CUDA: max_memory_allocated)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with TensorMemoryPeak() as tracker:
        fn()
    return tracker.peak / 2**20


def memory_method(device: torch.device) -> str:
    if device.type == 'cuda':
        return 'torch.cuda.max_memory_allocated above the memory allocated before the call'
    return ('peak of the tensor storages the call creates and holds at once (a TorchDispatchMode tracking op '
            'outputs until freed: tracemalloc for tensors, kernel scratch excluded)')


# ---------------------------------------------------------------------------------------------- report
def machine_description(device: torch.device) -> str:
    if device.type == 'cuda':
        chip = torch.cuda.get_device_name(device)
    else:
        chip = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as cpuinfo:
                text = cpuinfo.read()
            names = [line.split(':', 1)[1].strip() for line in text.splitlines() if line.startswith('model name')]
            isa = [f for f in ('avx512f', 'avx512_bf16', 'amx_bf16') if re.search(rf'\b{f}\b', text)]
            chip = f'{names[0]} x{len(names)} logical CPUs ({", ".join(isa) or "no avx512"})'
        except (OSError, IndexError):
            pass
    load = ', load average %.2f %.2f %.2f' % os.getloadavg() if hasattr(os, 'getloadavg') else ''
    return (f'{chip}; torch {torch.__version__}, {torch.get_num_threads()} threads, '
            f'python {platform.python_version()}{load}')


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float('nan')


def fmt(value: Optional[float], spec: str = '.2f', suffix: str = '') -> str:
    return '–' if value is None or value != value else f'{value:{spec}}{suffix}'


def speed_words(ratio: float) -> str:
    """``ratio`` = the other time / this time, in words: '2.03x faster', or '2.50x slower' below 1."""
    return f'{ratio:.2f}x faster' if ratio >= 1 else f'{1 / ratio:.2f}x slower'


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda given but torch.cuda.is_available() is False')
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = args.shape
    images = torch.randn(args.batch, 3, height, width, device=device)
    big_hw = (round(height * args.scale), round(width * args.scale))
    big_images = torch.randn(args.batch, 3, *big_hw, device=device)
    models = {k: v.to(device) for k, v in build_models(args.arch, args.models, args.skip).items()}
    full = ARCH_ALIASES.get(args.arch.lower(), args.arch.lower())
    short = full if full in TIMM_NAMES else full[0]
    labels = {k: v.format(a=short, t=timm_name(full), h=big_hw[0], w=big_hw[1]) for k, v in LABELS.items()}
    print(f'# DaViT backbone benchmark: {args.batch}x3x{height}x{width} on {args.device}', flush=True)
    print(f'machine: {machine_description(device)}', flush=True)
    same = check_same_numbers(models, images)

    compared = [m for m in args.models if m in models]
    # column -> row -> step; each repetition runs every step of a column once, round-robin over the rows.
    columns = {
        'fwd': {m: (lambda m=m: forward_step(models[m], images)) for m in compared},
        'train': {m: (lambda m=m: train_step(models[m], images)) for m in compared},
    }
    if 'cp' not in args.skip:
        columns['train']['ours+cp'] = lambda: train_step(models['ours+cp'], images)
    if 'scale' not in args.skip:
        columns['fwd']['ours@scale'] = lambda: forward_step(models[OURS], big_images)
        if args.scale_train:
            columns['train']['ours@scale'] = lambda: train_step(models[OURS], big_images)
    if 'bf16' not in args.skip:
        bf16_rows = [m for m in (OURS, 'timm') if m in models]
        columns['bf16'] = {m: (lambda m=m: forward_step(models[m], images, bf16=True)) for m in bf16_rows}

    # FLOPs of the compared models, counted in the first warm-up repetition (or a pass of their own).
    flops: Dict[Tuple[str, str], int] = {}
    to_count = {(col, row) for col in ('fwd', 'train') for row in compared}
    if not args.warmup:
        flops = {key: count_flops(columns[key[0]][key[1]]) for key in sorted(to_count)}
    times: Dict[str, Dict[str, List[float]]] = {col: {row: [] for row in steps} for col, steps in columns.items()}
    peaks: Dict[str, List[float]] = {'fp32': [], 'bf16': []}
    for rep in range(args.warmup + args.reps):
        started = time.perf_counter()
        for col, steps in columns.items():
            rows = list(steps)
            shift = rep % len(rows)
            for row in rows[shift:] + rows[:shift]:
                if rep == 0 and args.warmup and (col, row) in to_count:
                    flops[(col, row)] = count_flops(steps[row])
                    continue
                seconds = timed(steps[row], device)
                if rep >= args.warmup:
                    times[col][row].append(seconds)
        if rep >= args.warmup:
            peaks['fp32'].append(matmul_gflops(device, torch.float32))
            if 'bf16' in columns:
                peaks['bf16'].append(matmul_gflops(device, torch.bfloat16))
        kind, index = ('warm-up', rep + 1) if rep < args.warmup else ('rep', rep + 1 - args.warmup)
        print(f'  {kind} {index}: {time.perf_counter() - started:.1f} s', file=sys.stderr, flush=True)

    # Memory in one untimed call per step, after the timing (the CPU tracker slows ops down a little).
    mem = {col: {row: peak_memory_mb(step, device) for row, step in columns[col].items()} for col in ('fwd', 'train')}

    def ratio(col: str, row: str, base: str = OURS) -> float:
        """Median over repetitions of row's time / base's time in the same repetition."""
        return median([t / b for t, b in zip(times[col][row], times[col][base])])

    peak = median(peaks['fp32'])
    print(f'\nfp32 matmul {MATMUL_SIZE}x{MATMUL_SIZE}: {peak:.1f} GFLOP/s'
          + (f'; bf16: {median(peaks["bf16"]):.1f} GFLOP/s' if peaks['bf16'] else '') + ' (median over reps)')
    print(f'times: median of {args.reps} reps after {args.warmup} warm-up, models interleaved round-robin; '
          '"x faster" = median over reps of (their time / ours) within a rep')
    print(f'peak memory: {memory_method(device)}')
    if same is not None:
        print(f'ours vs timm on this input (same weights, our output norms): max abs diff {same:.2e}')
    print('\n| model | fwd s | fwd: ours x faster | fwd GFLOP/s (% of matmul) | fwd+bwd s | fwd+bwd: ours x faster '
          '| fwd+bwd GFLOP/s | peak MB fwd | peak MB fwd+bwd |')
    print('|---|---|---|---|---|---|---|---|---|')
    for row in compared:
        fwd_s, train_s = median(times['fwd'][row]), median(times['train'][row])
        fwd_rate = flops[('fwd', row)] / fwd_s / 1e9
        print(f'| {labels[row]} | {fwd_s:.3f} | {fmt(ratio("fwd", row))}x '
              f'| {fwd_rate:.0f} ({100 * fwd_rate / peak:.0f}%) '
              f'| {train_s:.3f} | {fmt(ratio("train", row))}x | {flops[("train", row)] / train_s / 1e9:.0f} '
              f'| {mem["fwd"][row]:.0f} | {mem["train"][row]:.0f} |')
    if 'cp' not in args.skip:
        cp_mem = mem['train']['ours+cp']
        print(f'| {labels["ours+cp"]} | – | – | – | {median(times["train"]["ours+cp"]):.3f} '
              f'| time {ratio("train", "ours+cp"):.2f}x of ours | – | – '
              f'| {cp_mem:.0f} ({100 * cp_mem / mem["train"][OURS]:.0f}% of ours) |')
    if 'scale' not in args.skip:
        pixels = big_hw[0] * big_hw[1] / (height * width)
        train_cells = (f'{median(times["train"]["ours@scale"]):.3f} | time {ratio("train", "ours@scale"):.2f}x of ours'
                       if args.scale_train else '– (--scale-train) | –')
        train_mem = f'{mem["train"]["ours@scale"]:.0f}' if args.scale_train else '–'
        print(f'| {labels["ours@scale"]} ({pixels:.2f}x pixels) | {median(times["fwd"]["ours@scale"]):.3f} '
              f'| time {ratio("fwd", "ours@scale"):.2f}x of ours | – | {train_cells} | – '
              f'| {mem["fwd"]["ours@scale"]:.0f} | {train_mem} |')
    if 'bf16' in columns:
        ours_bf16 = median(times['bf16'][OURS])
        bf16_gain = median([f / b for f, b in zip(times['fwd'][OURS], times['bf16'][OURS])])
        line = f'\nbf16 autocast inference: ours {ours_bf16:.3f} s ({speed_words(bf16_gain)} than ours fp32)'
        if 'timm' in columns['bf16']:
            line += f'; timm {median(times["bf16"]["timm"]):.3f} s (ours {speed_words(ratio("bf16", "timm"))})'
        print(line)
    fwd_flops = flops[('fwd', OURS)]
    fwd_rate = fwd_flops / median(times['fwd'][OURS]) / 1e9
    print(f'ours forward: {fwd_flops / 2e9:.1f} GMACs, {fwd_rate:.0f} GFLOP/s = {100 * fwd_rate / peak:.0f}% of the '
          f'fp32 matmul rate (all at that rate: {fwd_flops / peak / 1e9:.2f} s)')
    if hasattr(os, 'getloadavg'):
        print('load average at the end: %.2f %.2f %.2f' % os.getloadavg())

    if args.json:
        report = dict(args={k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
                      machine=machine_description(device), matmul_gflops=peaks, times=times,
                      flops={f'{c}/{r}': v for (c, r), v in flops.items()}, peak_memory_mb=mem,
                      memory_method=memory_method(device), max_abs_diff_vs_timm=same)
        with open(args.json, 'w') as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
