#!/usr/bin/env python
"""Time a whole model in ONNX Runtime against PyTorch eager on the CPU, interleaved, ratios in one run.

    python tools/analysis/onnx_benchmark.py [--model CONFIG H W ...] [--repeats 3] [--threads N]

Default: the paper's two settings with DaViT-T, Mask R-CNN at 800 x 1280 and UperNet at 512 x 2048 (the input
sizes the paper's FLOPs are given at), random weights (speed does not depend on them). For each model:

- PyTorch eager: ``model.predict`` on the preprocessed input (mmdet / mmseg's own test path: backbone, neck,
  heads, NMS, masks pasted into the image / logits resized), under ``torch.no_grad``;
- ONNX Runtime: the graph exported by mmdavit's exporter (``mmdavit.deploy.export``), run on the same input,
  plus the torch-free runtime's post-processing (masks pasted, class map arg-maxed), so both sides deliver the
  same thing.

Detectors are exported and run with score threshold 0 (``--score-thr``), so that both sides carry
``max_per_img`` detections (and masks) through to the end, as a trained model on a busy image does; with
random weights and the config's 0.05 nothing would pass and PyTorch would skip the mask head.

The runs alternate (PyTorch, ORT, PyTorch, ORT, ...) after one warm-up of each, so that a change in the
machine's load hits both; the script prints each run's seconds, the medians and the per-round ratio
ORT / PyTorch (median and range), with the CPU model, threads and load average before and after.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

PAPER_MODELS = [
    ('configs/detection/maskrcnn_davit_t.py', 800, 1280),
    ('configs/segmentation/upernet_davit_t.py', 512, 2048),
]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', nargs=3, action='append', metavar=('CONFIG', 'H', 'W'), default=None,
                        help='a config and its input size; repeat for several (default: DaViT-T Mask R-CNN at '
                             '800 x 1280 and UperNet at 512 x 2048)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per engine (default 3), after 1 warm-up')
    parser.add_argument('--threads', type=int, default=None,
                        help='threads for both engines (default: the number of CPUs, at most 8)')
    parser.add_argument('--exporter', choices=('dynamo', 'torchscript'), default='dynamo')
    parser.add_argument('--score-thr', type=float, default=0.0, help='detectors: score threshold (default 0)')
    parser.add_argument('--work-dir', default=None, help='keep the exported .onnx files here (default: a temp dir)')
    parser.add_argument('--cfg-options', nargs='+', default=None, metavar='KEY=VALUE',
                        help='override settings of every config (e.g. a narrower model for a quick check)')
    return parser.parse_args(argv)


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return ', '.join(f'{v:.1f}' for v in os.getloadavg())
    except OSError:
        return 'n/a'


def build_model(config: str, cfg_options: Optional[dict]):
    """The config's model with random weights, in eval mode on the CPU (no pretrained download)."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None
    if cfg.get('default_scope') == 'mmseg':
        from mmseg.apis import init_model
        model = init_model(cfg, None, device='cpu')
    else:
        from mmdet.apis import init_detector
        model = init_detector(cfg, None, device='cpu')
    return model.eval(), cfg


def time_once(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def benchmark(config: str, image_size, args, work_dir: Path, cfg_options: Optional[dict]) -> dict:
    import torch

    from mmdavit.deploy import runtime
    from mmdavit.deploy.export import _reference_samples, build_wrapper, export_onnx, padded_size

    model, cfg = build_model(config, cfg_options)
    name = Path(config).stem
    wrapper = build_wrapper(model, cfg, score_thr=args.score_thr, image_size=image_size)
    path = work_dir / f'{name}_{image_size[0]}x{image_size[1]}.onnx'
    start = time.perf_counter()
    export_onnx(wrapper, model, cfg, str(path), image_size=image_size, config_path=config, exporter=args.exporter,
                log=lambda line: None)
    print(f'{name}: exported {path.name} in {time.perf_counter() - start:.0f} s '
          f'({path.stat().st_size / 2**20:.0f} MiB, {args.exporter} exporter)', flush=True)

    torch.manual_seed(0)
    inputs = torch.randn(1, 3, *padded_size(cfg, image_size))
    samples = _reference_samples(model, inputs, torch.tensor([image_size]))
    onnx_model = runtime.OnnxModel(str(path), threads=args.threads)
    image_meta = runtime.ImageMeta(tuple(image_size), tuple(image_size), (1.0, 1.0))
    numpy_inputs = inputs.numpy()

    def pytorch():
        with torch.no_grad():
            return model.predict(inputs, [s.clone() for s in samples])

    def onnxruntime():
        outputs = onnx_model.run(numpy_inputs)
        if onnx_model.task == 'semantic':
            return runtime.postprocess_semantic(outputs, 0, image_meta, onnx_model.meta)
        return runtime.postprocess_detections(outputs, 0, image_meta, onnx_model.meta, args.score_thr)

    pytorch(), onnxruntime()  # warm-up: allocations, ORT's first-run graph work
    times = {'pytorch': [], 'onnxruntime': []}
    for _ in range(args.repeats):
        times['pytorch'].append(time_once(pytorch))
        times['onnxruntime'].append(time_once(onnxruntime))
    ratios = [o / p for o, p in zip(times['onnxruntime'], times['pytorch'])]
    detections = ''
    if onnx_model.task != 'semantic':
        count = len(onnxruntime().scores)
        reference = len(pytorch()[0].pred_instances.scores)
        detections = f'; detections per image: ORT {count}, PyTorch {reference}'
    result = dict(name=name, size=image_size, times=times, ratios=ratios)
    for engine, values in times.items():
        print(f'{name} {image_size[0]}x{image_size[1]} {engine}: ' + ' '.join(f'{v:.2f}' for v in values)
              + f' s (median {statistics.median(values):.2f} s)', flush=True)
    print(f'ratio {name} {image_size[0]}x{image_size[1]}: ONNX Runtime / PyTorch eager = '
          f'{statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}; '
          f'medians {statistics.median(times["onnxruntime"]):.2f} s vs {statistics.median(times["pytorch"]):.2f} s)'
          f'{detections}', flush=True)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.repeats < 1:
        raise SystemExit('error: --repeats must be at least 1')
    from mmengine.config import DictAction
    cfg_options = None
    if args.cfg_options:  # parsed as tools/train.py parses --cfg-options
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='+', action=DictAction)
        cfg_options = parser.parse_args(['--o', *args.cfg_options]).o
    import onnxruntime
    import torch

    import mmdavit  # noqa: F401  (registers the backbone)
    threads = args.threads or min(os.cpu_count() or 1, 8)
    args.threads = threads
    torch.set_num_threads(threads)
    models = [(c, int(h), int(w)) for c, h, w in (args.model or PAPER_MODELS)]
    for config, _, _ in models:
        if not Path(config).is_file():
            raise SystemExit(f'error: config {config} not found (paths are relative to {Path.cwd()})')
    print(f'CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), {threads} threads for both engines; '
          f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; load average {load_average()}',
          flush=True)
    with tempfile.TemporaryDirectory() as temp:
        work_dir = Path(args.work_dir or temp)
        work_dir.mkdir(parents=True, exist_ok=True)
        for config, height, width in models:
            benchmark(config, (height, width), args, work_dir, cfg_options)
    print(f'load average after: {load_average()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
