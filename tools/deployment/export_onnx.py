#!/usr/bin/env python
"""Export a trained detector or segmentor (backbone, neck, heads and post-processing) to one ONNX file.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out FILE.onnx --shape H W
        [--exporter dynamo|torchscript] [--opset N] [--batch-size N] [--score-thr T] [--max-dets K]
        [--paste-masks] [--no-verify] [--images IMAGE ...]

``--shape H W`` is the network-input image size (resized, before padding); the graph's input is that padded
to the config's size divisor (e.g. 120 x 152 -> 128 x 160). The graph is made for that size: export once per
input size. Standard ONNX ops only. The file carries its preprocessing, classes and output meanings as JSON
metadata (key ``mmdavit``), and is checked with ``onnx.checker``.

Verification (on by default) runs the file in ONNX Runtime on the given images, or the first two of the
config's validation set, and compares with the PyTorch model's ``predict`` on the same preprocessed input; it
prints the figures and exits with status 1 beyond tolerance.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from mmengine.config import DictAction

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='model config')
    parser.add_argument('checkpoint', help='trained weights (.pth)')
    parser.add_argument('--out', required=True, help='the ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='network-input image size, before padding to the size divisor')
    parser.add_argument('--exporter', choices=('dynamo', 'torchscript'), default='dynamo',
                        help='dynamo (default, torch >= 2.5, needs onnxscript) or torchscript (any torch)')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (default: 18 dynamo, 17 torchscript)')
    parser.add_argument('--batch-size', type=int, default=1, help='fixed batch size of the graph (default 1)')
    parser.add_argument('--score-thr', type=float, default=None,
                        help="detections: score threshold (default: the config's test_cfg)")
    parser.add_argument('--max-dets', type=int, default=None,
                        help="detections: K rows per image (default: the config's max_per_img)")
    parser.add_argument('--paste-masks', action='store_true',
                        help='instance masks pasted at the image size [B, K, H, W] instead of 28 x 28 per box')
    parser.add_argument('--verify', dest='verify', action='store_true', default=True,
                        help='compare ONNX Runtime with PyTorch predict (the default)')
    parser.add_argument('--no-verify', dest='verify', action='store_false', help='skip the comparison')
    parser.add_argument('--images', nargs='+', default=None,
                        help="images to verify on (default: the first two of the config's validation set)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None, metavar='KEY=VALUE',
                        help='override config settings, as in tools/train.py')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1 or min(args.shape) < 1:
        raise SystemExit('error: --batch-size and --shape must be positive')
    import mmdavit  # noqa: F401  registers the backbone
    from mmdavit.deploy.export import (ExportError, VerificationError, build_wrapper, export_onnx, load_inputs,
                                       load_model, val_images)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not Path(path).is_file():
            raise SystemExit(f'error: {what} {path} not found')
    model, cfg = load_model(args.config, args.checkpoint, args.cfg_options)
    image_size = tuple(args.shape)
    try:
        wrapper = build_wrapper(model, cfg, score_thr=args.score_thr, max_dets=args.max_dets,
                                paste_masks=args.paste_masks, image_size=image_size)
        export_onnx(wrapper, model, cfg, args.out, image_size=image_size, config_path=args.config,
                    exporter=args.exporter, opset=args.opset, batch_size=args.batch_size)
    except (ExportError, NotImplementedError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if not args.verify:
        return 0
    images = args.images or val_images(cfg)
    print(f'verifying on {len(images)} image(s): {", ".join(map(str, images))}')
    try:
        inputs, image_shapes = load_inputs(model, cfg, images, image_size)
        from mmdavit.deploy.export import verify
        verify(args.out, wrapper, model, inputs, image_shapes)
    except VerificationError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
