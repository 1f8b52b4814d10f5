#!/usr/bin/env python
"""Draw a trained model's predictions on images and save the pictures.

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE|DIR ...] --out-dir DIR [--score-thr 0.3]

Uses the inferencer of the config's package, chosen by its ``default_scope``: mmdet's ``DetInferencer``
(boxes and masks above ``--score-thr``), mmseg's ``MMSegInferencer`` (the class map blended over the image) or
mmpretrain's ``ImageClassificationInferencer`` (the top class). Pictures are named after the input files and
land in ``OUT_DIR/vis/``; the script prints where each one went.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from mmengine.config import Config

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='model config (detection, segmentation or classification)')
    parser.add_argument('checkpoint', help='trained weights (.pth)')
    parser.add_argument('images', nargs='+', help='image files, or folders of images')
    parser.add_argument('--out-dir', required=True, help='where to write the pictures (OUT_DIR/vis/)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes/masks scoring at least this (default 0.3)')
    parser.add_argument('--device', default=None, help='e.g. cpu or cuda:0 (default: cuda when available)')
    return parser.parse_args(argv)


def expand_images(inputs: List[str]) -> List[str]:
    """Image paths, folders replaced by the images they hold; one picture per distinct file name."""
    images = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += sorted(str(p) for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            images.append(str(item))
        else:
            raise SystemExit(f'error: image {item} not found (paths are relative to {Path.cwd()})')
    if not images:
        raise SystemExit(f'error: no image ({", ".join(IMAGE_SUFFIXES)}) in {", ".join(inputs)}')
    names = [Path(p).name for p in images]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SystemExit(f'error: several inputs are named {", ".join(clashes)}; pictures are named after their '
                         f'input, so run those images separately or with different --out-dir')
    return images


def infer_detection(args: argparse.Namespace, images: List[str], out_dir: Path) -> List[Path]:
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=args.config, weights=args.checkpoint, device=args.device,
                               show_progress=False)
    inferencer(images, out_dir=str(out_dir), pred_score_thr=args.score_thr, no_save_pred=True)
    return [out_dir / 'vis' / Path(p).name for p in images]


def infer_segmentation(args: argparse.Namespace, images: List[str], out_dir: Path) -> List[Path]:
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=args.config, weights=args.checkpoint, device=args.device)
    inferencer(images, out_dir=str(out_dir), img_out_dir='vis')
    return [out_dir / 'vis' / Path(p).name for p in images]


def infer_classification(args: argparse.Namespace, images: List[str], out_dir: Path) -> List[Path]:
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(model=args.config, pretrained=args.checkpoint,
                                               device=args.device)
    vis_dir = out_dir / 'vis'
    vis_dir.mkdir(parents=True, exist_ok=True)
    inferencer(images, show_dir=str(vis_dir))
    return [vis_dir / f'{Path(p).stem}.png' for p in images]


INFER_BY_SCOPE = {'mmdet': infer_detection, 'mmseg': infer_segmentation, 'mmpretrain': infer_classification}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f'error: checkpoint {args.checkpoint} not found (train one with tools/train.py, or '
                         f'convert released weights with tools/model_converters/)')
    scope = Config.fromfile(args.config).get('default_scope')
    if scope not in INFER_BY_SCOPE:
        raise SystemExit(f'error: {args.config} has default_scope={scope!r}; infer.py handles '
                         f'{", ".join(INFER_BY_SCOPE)} configs')
    images = expand_images(args.images)
    pictures = INFER_BY_SCOPE[scope](args, images, Path(args.out_dir))
    missing = [str(p) for p in pictures if not p.is_file()]
    if missing:
        print(f'error: the {scope} inferencer did not write {", ".join(missing)}', file=sys.stderr)
        return 1
    for image, picture in zip(images, pictures):
        print(f'{image} -> {picture}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
