#!/usr/bin/env python
"""Training memory of a detector config under DDP and FSDP on CPU ranks: what each rank holds, and one
training step's peak with and without activation checkpointing.

    python tools/analysis/fsdp_memory.py configs/detection/maskrcnn_florence2_large_fsdp.py
    python tools/analysis/fsdp_memory.py CONFIG --ranks 1 2 --image-size 512 512 --json memory.json

1. Per-rank state (tensor accounting, not RSS): the bytes of parameters, gradients and AdamW state one rank
   holds during the optimizer step of one training iteration (one image of --state-size; the image size
   does not change these numbers), counted once per storage. FSDP: mmdavit's ``DaViTFSDPStrategy`` (one FSDP
   unit per DaViT layer, full sharding) on each of --ranks processes over gloo. DDP: one process under
   mmengine's ``MMDistributedDataParallel``: every DDP rank holds the same full replica, whatever the number
   of ranks, so one rank is measured for all. DDP also keeps gradient buckets for its all-reduce (reported
   on their own: about the gradients' size again unless ``gradient_as_bucket_view=True``).
2. Train-step peak: one process, the plain model, forward + backward of one image of --image-size with the
   backbone's ``with_cp`` off and on: the parameters plus the peak of the tensors the step creates
   (``TensorMemoryPeak`` of benchmark.py: op outputs tracked until freed, kernel scratch not seen). AdamW's
   state is part 1's; it is not allocated here, to keep the process small.

The model is built without pretrained weights (``init_cfg=None``). Exits with status 1 when FSDP's per-rank
state at 2 ranks is above 55% of DDP's.
"""
import argparse
import json
import os
import os.path as osp
import socket
import sys
import tempfile
from typing import Dict, List

import torch
import torch.multiprocessing as mp

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from benchmark import TensorMemoryPeak  # noqa: E402

GIB = 2**30
FSDP_TARGET = 0.55  # FSDP per-rank state at 2 ranks, as a share of DDP's


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--ranks', type=int, nargs='+', default=[1, 2, 4], help='FSDP process counts (1 2 4)')
    parser.add_argument('--state-size', type=int, nargs=2, default=(128, 128), metavar=('H', 'W'),
                        help='image for the per-rank state step (default 128 128)')
    parser.add_argument('--image-size', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'),
                        help='image for the train-step peak (default 512 512)')
    parser.add_argument('--skip', default='', help='comma-separated parts to skip: ddp,fsdp,peak')
    parser.add_argument('--json', help='also write the results here')
    return parser.parse_args(argv)


def load_config(path: str):
    import mmdavit  # noqa: F401  (registries, mmdavit:: bases)
    from mmengine.config import Config
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None  # random weights: memory does not depend on them
    return cfg


def synthetic_batch(height: int, width: int, num_objects: int = 3, seed: int = 0) -> dict:
    """One image with ``num_objects`` boxes and masks, as mmdet's PackDetInputs gives it to the model."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    boxes, masks = [], torch.zeros(num_objects, height, width, dtype=torch.uint8)
    for i in range(num_objects):
        x0, y0 = int(width * (0.1 + 0.25 * i)), int(height * (0.15 + 0.2 * i))
        x1, y1 = min(width - 1, x0 + width // 4), min(height - 1, y0 + height // 3)
        boxes.append([x0, y0, x1, y1])
        masks[i, y0:y1, x0:x1] = 1
    sample = DetDataSample(metainfo=dict(img_id=0, img_path='synthetic.png', ori_shape=(height, width),
                                         img_shape=(height, width), scale_factor=(1.0, 1.0), flip=False,
                                         flip_direction=None))
    sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                       labels=torch.arange(num_objects) % 4,
                                       masks=BitmapMasks(masks.numpy(), height, width))
    return dict(inputs=[image], data_samples=[sample])


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen: Dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != 'meta':
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(size for ptr, size in seen.items() if ptr)


def optimizer_tensors(optimizer) -> List[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def train_step_state(model, optim_wrapper, batch: dict) -> dict:
    """One training iteration, split to see what is held at its peak (the optimizer step, when gradients
    and optimizer state exist together)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    inner = model.module if hasattr(model, 'module') else model
    with optim_wrapper.optim_context(model):
        data = inner.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
    loss, _ = inner.parse_losses(losses)
    optim_wrapper.backward(loss)
    params = list(model.parameters())
    if isinstance(model, FSDP):  # the flat parameters (their local shards) behind the original parameters
        params += [m._handle.flat_param for m in FSDP.fsdp_modules(model) if m._handle is not None]
    grads = [p.grad for p in params if p.grad is not None]
    grad_bytes = storage_bytes(grads)
    optim_wrapper.step()
    result = dict(params=storage_bytes(params), grads=grad_bytes,
                  optimizer=storage_bytes(optimizer_tensors(optim_wrapper.optimizer)))
    optim_wrapper.zero_grad()
    result['total'] = result['params'] + result['grads'] + result['optimizer']
    if hasattr(model, '_get_ddp_logging_data'):
        buckets = model._get_ddp_logging_data().get('bucket_sizes')
        if buckets:  # per-bucket sizes in bytes, as DDP's logger reports them
            result['ddp_buckets'] = sum(int(b) for b in str(buckets).split(', ') if b.strip().isdigit())
    return result


def rank_worker(rank: int, world_size: int, port: int, kind: str, config: str, size, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    cfg = load_config(config)
    from mmengine._strategy import DDPStrategy
    from mmdavit.engine import DaViTFSDPStrategy
    env = dict(launcher='pytorch', dist_cfg=dict(backend='gloo'), randomness=dict(seed=0))
    with tempfile.TemporaryDirectory() as work_dir:
        if kind == 'fsdp':
            strategy = DaViTFSDPStrategy(work_dir=work_dir, env_kwargs=env)
        else:  # mmengine's DDP strategy, minus its CUDA device_ids (the process group is gloo's)
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group('gloo')
            strategy = DDPStrategy(work_dir=work_dir, env_kwargs=env, model_wrapper=dict(
                type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False))
        model, optim_wrapper = strategy.prepare(cfg.model, optim_wrapper=cfg.optim_wrapper)
        result = train_step_state(model, optim_wrapper, synthetic_batch(*size, seed=rank))
    with open(osp.join(out_dir, f'{kind}_{world_size}_{rank}.json'), 'w') as f:
        json.dump(result, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def per_rank_state(kind: str, world_size: int, args) -> List[dict]:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(rank_worker, args=(world_size, free_port(), kind, args.config, args.state_size, out_dir),
                 nprocs=world_size)
        return [json.load(open(osp.join(out_dir, f'{kind}_{world_size}_{rank}.json')))
                for rank in range(world_size)]


def step_peak(config: str, size, with_cp_values=(False, True)) -> List[dict]:
    """Forward + backward of one image in one process: the parameters held before, and the peak of the
    tensors the step creates (activations kept for backward, gradients, temporaries). AdamW's state (twice the
    parameters, part 1) is left out here, so that the process stays small."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = load_config(config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(synthetic_batch(*size), True)
    params = storage_bytes(model.parameters())
    rows = []
    for with_cp in with_cp_values:
        model.backbone.with_cp = with_cp
        with TensorMemoryPeak() as tracker:
            loss, _ = model.parse_losses(model(**data, mode='loss'))
            loss.backward()
        model.zero_grad(set_to_none=True)
        rows.append(dict(with_cp=with_cp, params=params, step_peak=tracker.peak, total=params + tracker.peak))
        print(rows[-1], flush=True)
    return rows


def gib(n: float) -> str:
    return f'{n / GIB:.2f}'


def report(results: dict, args) -> List[str]:
    lines = [f'Per-rank state of {osp.basename(args.config)} (GiB; params + grads + AdamW state at the optimizer '
             'step, tensor accounting):', '',
             '| strategy | ranks | params | grads | AdamW state | total per rank | vs DDP |',
             '|---|---|---|---|---|---|---|']
    ddp = results.get('ddp')
    if ddp:
        extra = f' (+ {gib(ddp["ddp_buckets"])} DDP buckets)' if ddp.get('ddp_buckets') else ''
        lines.append(f'| DDP | any (measured on 1) | {gib(ddp["params"])} | {gib(ddp["grads"])} | '
                     f'{gib(ddp["optimizer"])} | {gib(ddp["total"])}{extra} | 100% |')
    for world_size, ranks in sorted(results.get('fsdp', {}).items()):
        worst = max(ranks, key=lambda r: r['total'])  # ranks differ by padding only
        share = f'{worst["total"] / ddp["total"]:.0%}' if ddp else '-'
        lines.append(f'| FSDP | {world_size} | {gib(worst["params"])} | {gib(worst["grads"])} | '
                     f'{gib(worst["optimizer"])} | {gib(worst["total"])} | {share} |')
    if results.get('peak'):
        h, w = args.image_size
        lines += ['', f'Forward + backward, one process, one {h}x{w} image (GiB; step peak = activations, gradients '
                  'and temporaries the step creates, at their peak; add AdamW state from the table above):', '',
                  '| with_cp | params | step peak | params + step peak |', '|---|---|---|---|']
        for row in results['peak']:
            lines.append(f'| {row["with_cp"]} | {gib(row["params"])} | {gib(row["step_peak"])} | {gib(row["total"])} |')
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    skip = set(filter(None, args.skip.split(',')))
    results: dict = dict(config=args.config, state_size=list(args.state_size), image_size=list(args.image_size),
                         threads=1, device='cpu')
    if 'ddp' not in skip:
        results['ddp'] = per_rank_state('ddp', 1, args)[0]
        print('DDP, 1 rank:', results['ddp'], flush=True)
    if 'fsdp' not in skip:
        results['fsdp'] = {}
        for world_size in args.ranks:
            results['fsdp'][world_size] = per_rank_state('fsdp', world_size, args)
            print(f'FSDP, {world_size} ranks:', results['fsdp'][world_size], flush=True)
    if 'peak' not in skip:
        torch.set_num_threads(1)
        results['peak'] = step_peak(args.config, args.image_size)
        print('Train-step peak:', results['peak'], flush=True)
    print('\n'.join(report(results, args)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    fsdp2 = results.get('fsdp', {}).get(2)
    if fsdp2 and results.get('ddp'):
        share = max(r['total'] for r in fsdp2) / results['ddp']['total']
        verdict = 'ok' if share <= FSDP_TARGET else 'ABOVE TARGET'
        print(f'FSDP per-rank state at 2 ranks: {share:.1%} of DDP\'s (target <= {FSDP_TARGET:.0%}): {verdict}')
        return 0 if share <= FSDP_TARGET else 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
