#!/usr/bin/env python
"""Draw an exported model's predictions with ONNX Runtime alone: no torch, mmcv, mmdet or mmseg needed.

    python tools/deployment/onnx_infer.py IMAGE [IMAGE|DIR ...] --model FILE.onnx --out-dir DIR [--score-thr 0.3]

FILE.onnx is what tools/deployment/export_onnx.py wrote; everything else (task, classes, palette, resize,
mean/std, padding) is read from the metadata inside it. Each image is preprocessed as the config's test pipeline
and data preprocessor do, run through ONNX Runtime and post-processed into the original image (boxes rescaled,
masks pasted, class maps resized); the picture (boxes, ``class: score`` labels and masks, or the class map with
class names, as tools/infer.py draws them) goes to ``OUT_DIR/vis/<image name>``. ``--save-pred`` also writes the
predictions as ``OUT_DIR/preds/<image stem>.npz``.

Needs numpy, opencv-python and onnxruntime only (``pip install -r requirements/deploy.txt``); this script loads
mmdavit/deploy/runtime.py by its path, so the mmdavit package (which imports torch) is not imported.
"""
import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import List, Optional

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
RUNTIME_PATH = Path(__file__).resolve().parents[2] / 'mmdavit' / 'deploy' / 'runtime.py'


def load_runtime():
    """mmdavit/deploy/runtime.py as a stand-alone module (importing ``mmdavit.deploy.runtime`` would run
    mmdavit/__init__.py, which needs torch); in an installed package's copy of tools/, the installed module."""
    if not RUNTIME_PATH.is_file():
        return importlib.import_module('mmdavit.deploy.runtime')
    name = 'mmdavit_deploy_runtime'
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RUNTIME_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as error:
        del sys.modules[name]
        raise SystemExit(f'error: the ONNX runtime needs {error.name}: pip install -r requirements/deploy.txt '
                         f'(numpy, opencv-python, onnxruntime)') from None
    return module


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('images', nargs='+', help='image files, or folders of images')
    parser.add_argument('--model', required=True, help='the .onnx file written by tools/deployment/export_onnx.py')
    parser.add_argument('--out-dir', required=True, help='where to write the pictures (OUT_DIR/vis/)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes/masks scoring at least this (default 0.3)')
    parser.add_argument('--scale', type=float, default=None,
                        help='draw on the image enlarged this many times (default: the config\'s visualizer '
                             'scale stored at export, else 1)')
    parser.add_argument('--threads', type=int, default=None, help='ONNX Runtime intra-op threads')
    parser.add_argument('--save-pred', action='store_true', help='also write OUT_DIR/preds/<stem>.npz')
    return parser.parse_args(argv)


def expand_images(inputs: List[str]) -> List[Path]:
    images = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            images.append(item)
        else:
            raise SystemExit(f'error: image {item} not found (paths are relative to {Path.cwd()})')
    if not images:
        raise SystemExit(f'error: no image ({", ".join(IMAGE_SUFFIXES)}) in {", ".join(inputs)}')
    names = [p.name for p in images]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SystemExit(f'error: several inputs are named {", ".join(clashes)}; pictures are named after their '
                         f'input, so run those images separately or with different --out-dir')
    return images


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    runtime = load_runtime()
    import cv2
    import numpy as np

    if not Path(args.model).is_file():
        raise SystemExit(f'error: model {args.model} not found (write one with tools/deployment/export_onnx.py)')
    images = expand_images(args.images)
    try:
        model = runtime.OnnxModel(args.model, threads=args.threads)
        decoded = [runtime.read_image(str(path)) for path in images]  # every input read before any is drawn
    except runtime.RuntimeInputError as error:
        raise SystemExit(f'error: {error}') from None
    scale = args.scale if args.scale is not None else float(model.meta.get('vis_scale') or 1.0)
    vis_dir = Path(args.out_dir) / 'vis'
    vis_dir.mkdir(parents=True, exist_ok=True)
    print(f'{args.model}: {model.meta.get("model", "?")} ({model.task}), input {model.meta["input_size"]}, '
          f'outputs {", ".join(model.output_names)}')
    failed, notes = [], []
    for path, image in zip(images, decoded):
        try:
            note = runtime.padding_note(image, model.meta)
            if note:
                notes.append(f'{path}: {note}')
            prediction = model.predict([image], score_thr=args.score_thr)[0]
            picture = runtime.draw(image, prediction, model.meta, scale=scale)
        except runtime.RuntimeInputError as error:
            failed.append(str(path))
            print(f'error: {path}: {error}', file=sys.stderr)
            continue
        out = vis_dir / path.name
        if not cv2.imwrite(str(out), picture):
            failed.append(str(path))
            print(f'error: {path}: could not write {out}', file=sys.stderr)
            continue
        if args.save_pred:
            pred_dir = Path(args.out_dir) / 'preds'
            pred_dir.mkdir(parents=True, exist_ok=True)
            fields = {k: v for k, v in vars(prediction).items() if isinstance(v, np.ndarray)}
            np.savez_compressed(pred_dir / f'{path.stem}.npz', **fields)
        if model.task == 'semantic':
            found = ', '.join(runtime.class_name(model.meta, int(c)) for c in np.unique(prediction.sem_seg))
            summary = f'classes {found}'
        else:
            summary = f'{len(prediction.scores)} detections >= {args.score_thr}'
        print(f'{path} -> {out} ({summary})')
    if notes:  # the first in full: the others differ only in their sizes
        more = f' (and {len(notes) - 1} more image(s) of other sizes)' if len(notes) > 1 else ''
        print(f'note: {notes[0]}{more}')
    if failed:
        print(f'error: {len(failed)} of {len(images)} images not drawn: {", ".join(failed)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
