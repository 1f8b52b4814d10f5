#!/usr/bin/env python
"""Draw a trained model's predictions on images and save the pictures.

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE|DIR ...] --out-dir DIR [--score-thr 0.3]

Uses the inferencer of the config's package, chosen by its ``default_scope``: mmdet's ``DetInferencer``
(boxes and masks above ``--score-thr``), mmseg's ``MMSegInferencer`` (the class map blended over the image) or
mmpretrain's ``ImageClassificationInferencer`` (the top class). Pictures are named after the input files and
land in ``OUT_DIR/vis/``; the script prints where each one went.

Every input is read before the model loads: a missing, corrupt or non-image file stops the run with the list of
them. An image the model or the visualizer fails on is named with the error, and the others are still drawn
(exit status 1).
"""
import argparse
import sys
from pathlib import Path
from typing import Callable, List, Optional

import mmcv
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


def read_problem(path: str) -> Optional[str]:
    """Why the inferencers could not read ``path`` (they decode with mmcv.imread), or None."""
    try:
        image = mmcv.imread(path)
    except Exception as error:  # mmcv / OpenCV raise several types for unreadable files
        return f'{type(error).__name__}: {error}'
    return None if image is not None else 'not an image OpenCV can decode: corrupt, or another kind of file'


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
    unreadable = []
    for path in images:
        problem = read_problem(path)
        if problem:
            unreadable.append(f'{path} ({problem})')
    if unreadable:
        raise SystemExit(f'error: not readable as images (nothing was drawn): {"; ".join(unreadable)}')
    names = [Path(p).name for p in images]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SystemExit(f'error: several inputs are named {", ".join(clashes)}; pictures are named after their '
                         f'input, so run those images separately or with different --out-dir')
    return images


# Each returns a function that draws one image and returns the picture's path.
Draw = Callable[[str], Path]


def detection_drawer(args: argparse.Namespace, cfg: Config, out_dir: Path) -> Draw:
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg, weights=args.checkpoint, device=args.device, show_progress=False)

    def draw(image: str) -> Path:
        inferencer(image, out_dir=str(out_dir), pred_score_thr=args.score_thr, no_save_pred=True)
        return out_dir / 'vis' / Path(image).name

    return draw


def segmentation_drawer(args: argparse.Namespace, cfg: Config, out_dir: Path) -> Draw:
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=args.device)

    scale = getattr(inferencer.visualizer, 'scale', 1.0)  # mmdavit's Enlarged* visualizers draw bigger

    def draw(image: str) -> Path:
        height, width = mmcv.imread(image).shape[:2]
        if round(height * scale) * round(width * scale) == 1:  # mmseg 1.2 takes a 1x1 label map for an index
            raise ValueError('a single-pixel image, which mmseg\'s visualizer cannot draw')
        inferencer(image, out_dir=str(out_dir), img_out_dir='vis')
        return out_dir / 'vis' / Path(image).name

    return draw


def classification_drawer(args: argparse.Namespace, cfg: Config, out_dir: Path) -> Draw:
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(model=cfg, pretrained=args.checkpoint, device=args.device)
    vis_dir = out_dir / 'vis'
    vis_dir.mkdir(parents=True, exist_ok=True)

    def draw(image: str) -> Path:
        inferencer(image, show_dir=str(vis_dir))
        return vis_dir / f'{Path(image).stem}.png'

    return draw


DRAWER_BY_SCOPE = {'mmdet': detection_drawer, 'mmseg': segmentation_drawer, 'mmpretrain': classification_drawer}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f'error: checkpoint {args.checkpoint} not found (train one with tools/train.py, or '
                         f'convert released weights with tools/model_converters/)')
    cfg = Config.fromfile(args.config)
    scope = cfg.get('default_scope')
    if scope not in DRAWER_BY_SCOPE:
        raise SystemExit(f'error: {args.config} has default_scope={scope!r}; infer.py handles '
                         f'{", ".join(DRAWER_BY_SCOPE)} configs')
    images = expand_images(args.images)
    # The inferencer writes the pictures itself; the config's storage backends (LocalVisBackend) would need a
    # save_dir, warn without one, and store nothing we use.
    if cfg.get('visualizer') is not None:
        cfg.visualizer.vis_backends = None
    draw = DRAWER_BY_SCOPE[scope](args, cfg, Path(args.out_dir))
    failed = []
    for image in images:
        try:
            picture = draw(image)
        except Exception as error:  # name the image and go on with the others
            failed.append(image)
            print(f'error: {image}: {type(error).__name__}: {error}', file=sys.stderr)
            continue
        if picture.is_file():
            print(f'{image} -> {picture}')
        else:
            failed.append(image)
            print(f'error: {image}: the {scope} inferencer did not write {picture}', file=sys.stderr)
    if failed:
        print(f'error: {len(failed)} of {len(images)} images not drawn: {", ".join(failed)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
