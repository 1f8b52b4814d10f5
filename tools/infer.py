#!/usr/bin/env python
"""Draw a trained model's predictions on images and save the pictures.

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE|DIR ...] --out-dir DIR [--score-thr 0.3]

Uses the inferencer of the config's package, chosen by its ``default_scope``: mmdet's ``DetInferencer``
(boxes and masks above ``--score-thr``), mmseg's ``MMSegInferencer`` (the class map blended over the image) or
mmpretrain's ``ImageClassificationInferencer`` (the top class). Pictures are named after the input files and
land in ``OUT_DIR/vis/``; the script prints where each one went.

CONFIG is a file or an ``mmdavit::`` name (``mmdavit::detection/maskrcnn_davit_t.py``). CHECKPOINT is a file in
any format mmdavit reads (``.pth``, ``.safetensors``, a sharded ``*.index.json``), an
``hf-hub://OWNER/REPO[@REVISION][/FILE]`` name (docs/checkpoint-formats.md) or a URL mmengine fetches. Class
names and colours come from the checkpoint's ``meta`` (a training run's checkpoint has them); a checkpoint
without (a ``.safetensors`` file, a bare state dict) gets the config's test dataset's, not mmdet's COCO or
mmseg's Cityscapes defaults. The script says which it used.

Every input is read before the model loads: a missing, corrupt or non-image file stops the run with the list of
them. An image the model or the visualizer fails on is named with the error, and the others are still drawn
(exit status 1).
"""
import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import mmcv
from mmengine.config import Config

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='model config (detection, segmentation or classification): a file or an '
                        'mmdavit:: name')
    parser.add_argument('checkpoint', help='trained weights: a file (.pth, .safetensors, *.index.json), an '
                        'hf-hub://OWNER/REPO[@REVISION][/FILE] name or a URL')
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


def local_checkpoint(checkpoint: str) -> str:
    """What the inferencers load: a local file, the file an ``hf-hub://`` name stands for (through the Hugging
    Face cache, downloading if allowed), or a URL as given (mmengine's CheckpointLoader fetches it)."""
    from mmdavit.models.hub import HF_HUB_PREFIX, resolve_hf_hub
    if checkpoint.startswith(HF_HUB_PREFIX):
        try:
            return resolve_hf_hub(checkpoint)
        except (FileNotFoundError, ValueError) as error:  # messages that say what to do
            raise SystemExit(f'error: {error}')
    if '://' in checkpoint:
        return checkpoint
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise SystemExit(f'error: checkpoint {checkpoint} not found (train one with tools/train.py, convert '
                         f'released weights with tools/model_converters/, or name one: '
                         f'{HF_HUB_PREFIX}OWNER/REPO[@REVISION][/FILE])')
    return str(path)


def read_config(config: str) -> Config:
    """A config file, or an ``mmdavit::`` name of a shipped config."""
    if '::' in config and not Path(config).is_file():
        import mmdavit  # noqa: F401 (registers the mmdavit:: scope where the start-up hook did not run)
        path, _ = Config._get_cfg_path(config, '<command line>')  # a misspelt name lists the shipped configs
        return Config.fromfile(path)
    if not Path(config).is_file():
        raise SystemExit(f'error: config {config} not found (paths are relative to {Path.cwd()}; shipped configs '
                         f'also go by name: mmdavit::detection/maskrcnn_davit_t.py)')
    return Config.fromfile(config)


def config_dataset_meta(cfg: Config, datasets) -> dict:
    """The classes and palette of the config's test dataset (its class's, as the config's ``metainfo`` changes
    them), without reading the data."""
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True
    return dict(datasets.build(dataset_cfg).metainfo)


def classes_from_config(inferencer_class, datasets, fallback: str):
    """``inferencer_class`` taking the config's class names (and palette) for a checkpoint whose ``meta`` has
    none, where mmdet and mmseg fall back to COCO and Cityscapes (``fallback``) with only a warning. The
    chosen source is kept in ``classes_source``."""

    class Inferencer(inferencer_class):
        classes_source = 'the checkpoint'

        def _load_weights_to_model(self, model, checkpoint, cfg):
            meta = (checkpoint or {}).get('meta') or {}
            if checkpoint is None or 'dataset_meta' in meta or 'CLASSES' in meta:
                return super()._load_weights_to_model(model, checkpoint, cfg)
            with warnings.catch_warnings():  # its default is replaced below; the warning would mislead
                warnings.filterwarnings('ignore', message=f'.*{fallback}')
                super()._load_weights_to_model(model, checkpoint, cfg)
            found = config_dataset_meta(cfg, datasets)
            model.dataset_meta.update({key: found[key] for key in ('classes', 'palette') if key in found})
            self.classes_source = 'the config (the checkpoint names no classes)'

    Inferencer.__name__ = Inferencer.__qualname__ = inferencer_class.__name__
    return Inferencer


# Each returns a function that draws one image and returns the picture's path.
Draw = Callable[[str], Path]


def report_classes(inferencer) -> None:
    classes = inferencer.visualizer.dataset_meta.get('classes') or ()
    print(f'classes from {inferencer.classes_source}: {", ".join(map(str, classes))}')


def detection_inferencer(cfg: Config, checkpoint: str, device: Optional[str] = None):
    from mmdet.apis import DetInferencer
    from mmdet.registry import DATASETS
    return classes_from_config(DetInferencer, DATASETS, 'COCO classes by default')(
        model=cfg, weights=checkpoint, device=device, show_progress=False)


def detection_drawer(args: argparse.Namespace, cfg: Config, out_dir: Path) -> Draw:
    inferencer = detection_inferencer(cfg, args.checkpoint, args.device)
    report_classes(inferencer)

    def draw(image: str) -> Path:
        inferencer(image, out_dir=str(out_dir), pred_score_thr=args.score_thr, no_save_pred=True)
        return out_dir / 'vis' / Path(image).name

    return draw


def segmentation_inferencer(cfg: Config, checkpoint: str, device: Optional[str] = None):
    from mmseg.apis import MMSegInferencer
    from mmseg.registry import DATASETS
    inferencer = classes_from_config(MMSegInferencer, DATASETS, 'Cityscapes by default')(
        model=cfg, weights=checkpoint, device=device)
    # MMSegInferencer gives its visualizer Cityscapes' classes and palette unless told others, whatever the
    # model's dataset_meta holds. A checkpoint with classes but no palette gets the config's colours.
    classes, palette = inferencer.model.dataset_meta['classes'], inferencer.model.dataset_meta.get('palette')
    if not palette:
        palette = config_dataset_meta(cfg, DATASETS)['palette']
    inferencer.visualizer.set_dataset_meta(classes, palette)
    return inferencer


def segmentation_drawer(args: argparse.Namespace, cfg: Config, out_dir: Path) -> Draw:
    inferencer = segmentation_inferencer(cfg, args.checkpoint, args.device)
    report_classes(inferencer)

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
    cfg = read_config(args.config)
    scope = cfg.get('default_scope')
    if scope not in DRAWER_BY_SCOPE:
        raise SystemExit(f'error: {args.config} has default_scope={scope!r}; infer.py handles '
                         f'{", ".join(DRAWER_BY_SCOPE)} configs')
    images = expand_images(args.images)
    args.checkpoint = local_checkpoint(args.checkpoint)  # after the images: an hf-hub:// name may download
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
