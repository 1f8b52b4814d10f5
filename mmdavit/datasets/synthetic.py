"""Seeded synthetic "coloured shapes" datasets in the real COCO and ADE20K layouts.

``make demo`` trains Mask R-CNN (mmdet) and UperNet (mmseg) on these without any download, so the task
is deliberately easy: four classes, each drawn in its own saturated colour (mildly jittered, plus pixel
noise) over a muted, low-saturation gradient-and-ripple background. A few hundred CPU iterations are
enough for mAP / mIoU to rise clearly above an untrained model.

The classes and palette, to copy into plain-dict configs::

    classes = ('circle', 'square', 'triangle', 'star')
    palette = [(230, 30, 30), (30, 190, 50), (40, 70, 230), (240, 210, 20)]   # RGB

Layouts written (only ``data_root`` and ``metainfo`` differ from the stock configs):

* :func:`make_coco_instances` -> ``root/{train2017,val2017}/<12-digit id>.png`` and
  ``root/annotations/instances_{train2017,val2017}.json``. Images are PNG (no compression artefacts);
  the json ``file_name`` fields say so, and mmdet's ``CocoDataset`` reads names from the json.
  Config: ``dict(type='CocoDataset', data_root=root, metainfo=dict(classes=classes, palette=palette),
  ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/'), ...)``.
* :func:`make_ade_semantic` -> ``root/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg``
  (JPEG quality 95, no chroma subsampling) and ``root/annotations/{training,validation}/*.png``
  (single-channel uint8: 0 = background, shape class k -> k + 1, exactly like ADE20K's "0 = other").
  Config: ``dict(type='BaseSegDataset', data_root=root, metainfo=dict(classes=classes, palette=palette),
  reduce_zero_label=True, data_prefix=dict(img_path='images/training',
  seg_map_path='annotations/training'), ...)``. ``type='ADE20KDataset'`` cannot be used here: mmseg
  only accepts custom ``classes`` for it when they are a subset of ADE20K's 150 names (it raises
  ``ValueError`` otherwise). ``BaseSegDataset`` has the same ``.jpg`` / ``.png`` suffix defaults.

Annotations are exact: each COCO instance's ``segmentation`` outlines the pixels of its *visible* region
(objects drawn later occlude earlier ones), so pycocotools decodes it back to exactly ``area`` pixels
inside ``bbox``. The same seed gives byte-identical files on the same software stack; every image has
its own random stream (seeded by seed, dataset, split and index), so e.g. the validation images do not
change when ``num_train`` does. Needs numpy, Pillow and OpenCV only (no torch, no network).
"""
import json
import math
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

SHAPE_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star')
# Saturated RGB colours, far from each other and from the grey-ish background.
SHAPE_PALETTE: Tuple[Tuple[int, int, int], ...] = ((230, 30, 30), (30, 190, 50), (40, 70, 230),
                                                   (240, 210, 20))
# mmdet wants a list of RGB tuples, mmseg a list of RGB lists.
COCO_METAINFO: dict = dict(classes=SHAPE_CLASSES, palette=[tuple(c) for c in SHAPE_PALETTE])
ADE_METAINFO: dict = dict(classes=SHAPE_CLASSES, palette=[list(c) for c in SHAPE_PALETTE])

DEFAULT_IMAGE_SIZE: Tuple[int, int] = (192, 256)  # (height, width)
MIN_IMAGE_SIDE = 32  # below this the smallest shape (radius MIN_RADIUS_PX) no longer fits with room to move
STAMP_NAME = 'synthetic.json'
GENERATOR_VERSION = 1  # bump whenever the drawing changes, so old stamps stop matching

# --- appearance: what makes the task easy -------------------------------------------------------------
MIN_INSTANCES, MAX_INSTANCES = 1, 6
MIN_RADIUS_PX = 6.0
RADIUS_RANGE = (0.07, 0.20)  # as fractions of the image's shorter side
COLOUR_JITTER = 15  # per-channel uniform jitter of each instance's colour: mild, keeps classes apart
NOISE_SIGMA = 5.0  # per-pixel Gaussian noise over the whole image
BORDER_MARGIN_PX = 1.0  # shapes stay fully inside the image: no truncated objects
# Max vertex distance from the centre, in units of the sampled radius; chosen so the classes have
# similar areas (circle pi r^2, the others roughly 2.2-2.6 r^2).
_SHAPE_EXTENT = {'circle': 1.0, 'square': 1.15, 'triangle': 1.3, 'star': 1.35}
_STAR_INNER_RATIO = 0.55 / 1.35

# --- occlusion rules: every drawn object gets a clean, learnable annotation ---------------------------
MIN_VISIBLE_FRACTION = 0.3  # an occluded object keeps at least this share of its own pixels
MIN_COMPONENT_AREA = 16  # no visible fragment smaller than this (slivers are noise for the detector)
PLACEMENT_TRIES = 20  # a new object is re-sampled this often before the image makes do without it

_DATASET_TAGS = {'coco': 0, 'ade': 1}
_SPLIT_TAGS = {'train': 0, 'val': 1}
_COCO_DIRS = {'train': 'train2017', 'val': 'val2017'}
_ADE_DIRS = {'train': 'training', 'val': 'validation'}
_ADE_PREFIXES = {'train': 'ADE_train_', 'val': 'ADE_val_'}
_COCO_IMAGE_RE = re.compile(r'^\d{12}\.png$')
_ADE_FILE_RE = re.compile(r'^ADE_(train|val)_\d{8}\.(jpg|png)$')

ImageSize = Tuple[int, int]
PathLike = Union[str, Path]


class Shape(NamedTuple):
    """One drawn object: its class, fill colour and full (unoccluded) boolean mask."""
    class_index: int  # 0-based index into SHAPE_CLASSES
    colour: Tuple[int, int, int]
    mask: np.ndarray


# ======================================================================================================
# Public API
# ======================================================================================================
def make_coco_instances(root: PathLike,
                        num_train: int = 200,
                        num_val: int = 50,
                        image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
                        seed: int = 0,
                        force: bool = False) -> dict:
    """Write a COCO-format instance segmentation dataset of coloured shapes under ``root``.

    Args:
        root: Output folder; ``train2017/``, ``val2017/`` and ``annotations/`` are created in it.
        num_train: Number of training images (>= 1).
        num_val: Number of validation images (>= 1).
        image_size: ``(height, width)`` in pixels, each >= ``MIN_IMAGE_SIDE``.
        seed: Non-negative seed; the same seed gives byte-identical files.
        force: Regenerate even when ``root`` already holds this exact dataset.

    Returns:
        Summary dict: ``format``, ``root``, ``classes``, ``image_size``, ``seed``, ``reused`` (True when
        an existing complete dataset was kept) and ``splits[train|val]`` with ``images``, ``instances``,
        ``img_dir`` and ``ann_file``.
    """
    root = Path(root)
    params = _validated_params('coco', num_train, num_val, image_size, seed)
    expected = _coco_expected_files(params)
    stamp = None if force else _matching_stamp(root, params, expected)
    if stamp is None:
        _prepare_output(root, [_COCO_DIRS['train'], _COCO_DIRS['val'], 'annotations'], _COCO_IMAGE_RE,
                        foreign_files_allowed=True)
        counts = {split: _write_coco_split(root, split, params) for split in ('train', 'val')}
        stamp = _write_stamp(root, params, counts)
    return _coco_summary(root, params, stamp['counts'], reused=stamp.get('reused', False))


def make_ade_semantic(root: PathLike,
                      num_train: int = 200,
                      num_val: int = 50,
                      image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
                      seed: int = 0,
                      force: bool = False) -> dict:
    """Write an ADE20K-layout semantic segmentation dataset of coloured shapes under ``root``.

    Label maps are single-channel uint8 PNGs with 0 = background and shape class k (0-based) -> k + 1,
    so ``reduce_zero_label=True`` turns background into the ignore index and classes into 0..K-1.

    Args:
        root: Output folder; ``images/{training,validation}`` and ``annotations/{training,validation}``
            are created in it. Those four folders must not hold other ``.jpg`` / ``.png`` files: mmseg
            would load every image it finds there.
        num_train: Number of training images (>= 1).
        num_val: Number of validation images (>= 1).
        image_size: ``(height, width)`` in pixels, each >= ``MIN_IMAGE_SIDE``.
        seed: Non-negative seed; the same seed gives byte-identical files.
        force: Regenerate even when ``root`` already holds this exact dataset.

    Returns:
        Summary dict: ``format``, ``root``, ``classes``, ``image_size``, ``seed``, ``reused`` and
        ``splits[train|val]`` with ``images``, ``instances`` (shapes drawn), ``img_dir`` and
        ``seg_map_dir``.
    """
    root = Path(root)
    params = _validated_params('ade', num_train, num_val, image_size, seed)
    expected = _ade_expected_files(params)
    stamp = None if force else _matching_stamp(root, params, expected)
    if stamp is None:
        sub_dirs = [f'{kind}/{_ADE_DIRS[split]}' for kind in ('images', 'annotations') for split in _ADE_DIRS]
        _prepare_output(root, sub_dirs, _ADE_FILE_RE, foreign_files_allowed=False)
        counts = {split: _write_ade_split(root, split, params) for split in ('train', 'val')}
        stamp = _write_stamp(root, params, counts)
    return _ade_summary(root, params, stamp['counts'], reused=stamp.get('reused', False))


def render_scene(rng: np.random.Generator, image_size: ImageSize) -> Tuple[np.ndarray, List[Shape]]:
    """Draw one random scene.

    Args:
        rng: Random stream; all randomness of the scene comes from it.
        image_size: ``(height, width)``.

    Returns:
        ``(image, shapes)``: an RGB uint8 image and the shapes in drawing order (later ones on top).
    """
    height, width = image_size
    shapes = _sample_shapes(rng, height, width)
    image = _background(rng, height, width)
    for shape in shapes:
        image[shape.mask] = shape.colour
    image += rng.normal(0.0, NOISE_SIGMA, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), shapes


def visible_masks(shapes: Sequence[Shape]) -> List[np.ndarray]:
    """Each shape's visible pixels: its mask minus the masks of all shapes drawn after it.

    Args:
        shapes: Shapes in drawing order.
    """
    covered = np.zeros_like(shapes[0].mask) if shapes else None
    visible: List[np.ndarray] = []
    for shape in reversed(shapes):
        visible.append(shape.mask & ~covered)
        covered |= shape.mask
    return visible[::-1]


def semantic_label_map(shapes: Sequence[Shape], image_size: ImageSize) -> np.ndarray:
    """uint8 label map: 0 = background, shape class k -> k + 1 (the topmost shape wins).

    Args:
        shapes: Shapes in drawing order.
        image_size: ``(height, width)``.
    """
    label = np.zeros(image_size, dtype=np.uint8)
    for shape in shapes:
        label[shape.mask] = shape.class_index + 1
    return label


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` that pycocotools decodes back to exactly ``mask``.

    pycocotools counts pixel (x, y) as inside when its centre (x + .5, y + .5) is, so we trace the
    outline a quarter pixel outside the boundary pixels' centres: contours of the 2x-upsampled mask
    (OpenCV returns pixel centres, u = 2x or 2x + 1) map back to u / 2 + .25, i.e. x + .25 or x + .75.
    Nothing else's centre is within a quarter pixel, so rasterisation cannot flip a pixel. Holes cannot
    be expressed this way; the scene sampler never produces them (see ``_has_hole``).

    Args:
        mask: Boolean or 0/1 array (H, W) without holes.
    """
    upsampled = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(contour.reshape(-1, 2) / 2.0 + 0.25).ravel().tolist() for contour in contours]


def mask_to_bbox(mask: np.ndarray) -> List[int]:
    """COCO ``[x, y, w, h]`` of the pixels in ``mask`` (pycocotools ``toBbox`` convention).

    Args:
        mask: Non-empty boolean array (H, W).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


# ======================================================================================================
# Input checks and the reuse stamp
# ======================================================================================================
def _validated_params(fmt: str, num_train: int, num_val: int, image_size: Sequence[int], seed: int) -> dict:
    """Check the arguments and return them as the dict stored in the stamp."""
    for name, value in (('num_train', num_train), ('num_val', num_val)):
        if not _is_int(value) or value < 1:
            raise ValueError(f'{name} must be an integer >= 1 (got {value!r}); every split needs at least '
                             f'one image, e.g. {name}=1.')
    if not _is_int(seed) or seed < 0:
        raise ValueError(f'seed must be a non-negative integer (got {seed!r}), e.g. seed=0.')
    if (isinstance(image_size, (str, bytes)) or len(image_size) != 2
            or not all(_is_int(side) for side in image_size)):
        raise ValueError(f'image_size must be a (height, width) pair of integers (got {image_size!r}), '
                         f'e.g. {DEFAULT_IMAGE_SIZE}.')
    if min(image_size) < MIN_IMAGE_SIDE:
        raise ValueError(f'image_size {tuple(image_size)} is too small for the shapes: both height and '
                         f'width must be >= {MIN_IMAGE_SIDE} px; use e.g. {DEFAULT_IMAGE_SIZE}.')
    return dict(generator='mmdavit.datasets.synthetic', version=GENERATOR_VERSION, format=fmt,
                num_train=int(num_train), num_val=int(num_val),
                image_size=[int(image_size[0]), int(image_size[1])], seed=int(seed))


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _matching_stamp(root: Path, params: dict, expected_files: List[str]) -> Optional[dict]:
    """The stamp of a complete dataset made with ``params``, or None when it must be (re)generated."""
    try:
        stamp = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get('params') != params or not all((root / name).is_file() for name in expected_files):
        return None
    return dict(stamp, reused=True)


def _write_stamp(root: Path, params: dict, counts: dict) -> dict:
    """Written last, so an interrupted run never looks complete. Holds no absolute paths: the folder
    may be moved."""
    stamp = dict(params=params, counts=counts)
    (root / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + '\n')
    return stamp


def _prepare_output(root: Path, sub_dirs: List[str], generated_name: re.Pattern,
                    foreign_files_allowed: bool) -> None:
    """Invalidate the stamp and delete files of an earlier generation, so a smaller rerun leaves no
    stale images behind. Only names this module writes are deleted, and nothing is deleted when a
    folder holds foreign images that would end up in the dataset."""
    folders = [root / sub_dir for sub_dir in sub_dirs]
    existing = [path for folder in folders if folder.is_dir() for path in sorted(folder.iterdir())]
    generated = [path for path in existing if path.is_file() and generated_name.match(path.name)]
    foreign = [path for path in existing if path not in generated and path.suffix.lower() in ('.jpg', '.png')]
    if foreign and not foreign_files_allowed:
        raise FileExistsError(f'{foreign[0]} was not written by this generator, but mmseg would load it as '
                              f'part of the dataset ({len(foreign)} such file(s)). Use an empty output folder '
                              f'or remove the foreign files.')
    (root / STAMP_NAME).unlink(missing_ok=True)
    for path in generated:
        path.unlink()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)


# ======================================================================================================
# COCO
# ======================================================================================================
def _coco_image_name(image_id: int) -> str:
    return f'{image_id:012d}.png'


def _coco_ann_file(split: str) -> str:
    return f'annotations/instances_{_COCO_DIRS[split]}.json'


def _coco_expected_files(params: dict) -> List[str]:
    files = []
    for split in ('train', 'val'):
        files.append(_coco_ann_file(split))
        files += [f'{_COCO_DIRS[split]}/{_coco_image_name(i)}' for i in range(1, _split_size(params, split) + 1)]
    return files


def _write_coco_split(root: Path, split: str, params: dict) -> dict:
    """Write one split's images and annotation json; return its image / instance counts."""
    image_size = tuple(params['image_size'])
    images, annotations = [], []
    for image_id in range(1, _split_size(params, split) + 1):
        image, shapes = render_scene(_image_rng(params, split, image_id - 1), image_size)
        file_name = _coco_image_name(image_id)
        Image.fromarray(image).save(root / _COCO_DIRS[split] / file_name, format='PNG')
        images.append(dict(id=image_id, file_name=file_name, height=image_size[0], width=image_size[1]))
        for shape, visible in zip(shapes, visible_masks(shapes)):
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, shape, visible))
    categories = [dict(id=k + 1, name=name, supercategory='shape') for k, name in enumerate(SHAPE_CLASSES)]
    info = dict(description=f'mmdavit synthetic shapes ({split})', version=str(GENERATOR_VERSION),
                seed=params['seed'])
    coco = dict(info=info, licenses=[], images=images, annotations=annotations, categories=categories)
    (root / _coco_ann_file(split)).write_text(json.dumps(coco, separators=(',', ':')))
    return dict(images=len(images), instances=len(annotations))


def _coco_annotation(ann_id: int, image_id: int, shape: Shape, visible: np.ndarray) -> dict:
    return dict(id=ann_id, image_id=image_id, category_id=shape.class_index + 1,
                segmentation=mask_to_polygons(visible), area=int(visible.sum()), bbox=mask_to_bbox(visible),
                iscrowd=0)


def _coco_summary(root: Path, params: dict, counts: dict, reused: bool) -> dict:
    splits = {split: dict(counts[split], img_dir=str(root / _COCO_DIRS[split]),
                          ann_file=str(root / _coco_ann_file(split))) for split in ('train', 'val')}
    return _summary(root, params, splits, reused)


# ======================================================================================================
# ADE20K
# ======================================================================================================
def _ade_stem(split: str, index: int) -> str:
    return f'{_ADE_PREFIXES[split]}{index + 1:08d}'


def _ade_expected_files(params: dict) -> List[str]:
    files = []
    for split in ('train', 'val'):
        for index in range(_split_size(params, split)):
            stem = _ade_stem(split, index)
            files += [f'images/{_ADE_DIRS[split]}/{stem}.jpg', f'annotations/{_ADE_DIRS[split]}/{stem}.png']
    return files


def _write_ade_split(root: Path, split: str, params: dict) -> dict:
    """Write one split's JPEG images and PNG label maps; return its image / shape counts."""
    image_size = tuple(params['image_size'])
    num_shapes = 0
    for index in range(_split_size(params, split)):
        image, shapes = render_scene(_image_rng(params, split, index), image_size)
        stem = _ade_stem(split, index)
        # quality 95 without chroma subsampling keeps colour edges sharp against the label map
        Image.fromarray(image).save(root / 'images' / _ADE_DIRS[split] / f'{stem}.jpg', format='JPEG',
                                    quality=95, subsampling=0)
        Image.fromarray(semantic_label_map(shapes, image_size)).save(
            root / 'annotations' / _ADE_DIRS[split] / f'{stem}.png', format='PNG')
        num_shapes += len(shapes)
    return dict(images=_split_size(params, split), instances=num_shapes)


def _ade_summary(root: Path, params: dict, counts: dict, reused: bool) -> dict:
    splits = {split: dict(counts[split], img_dir=str(root / 'images' / _ADE_DIRS[split]),
                          seg_map_dir=str(root / 'annotations' / _ADE_DIRS[split])) for split in ('train', 'val')}
    return _summary(root, params, splits, reused)


# ======================================================================================================
# Shared helpers
# ======================================================================================================
def _split_size(params: dict, split: str) -> int:
    return params['num_train'] if split == 'train' else params['num_val']


def _image_rng(params: dict, split: str, index: int) -> np.random.Generator:
    """A separate stream per image: one image's content never depends on how many came before it."""
    entropy = [params['seed'], _DATASET_TAGS[params['format']], _SPLIT_TAGS[split], index]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _summary(root: Path, params: dict, splits: Dict[str, dict], reused: bool) -> dict:
    return dict(format=params['format'], root=str(root), classes=list(SHAPE_CLASSES),
                image_size=list(params['image_size']), seed=params['seed'], reused=reused, splits=splits)


# ======================================================================================================
# Scene sampling and drawing
# ======================================================================================================
def _sample_shapes(rng: np.random.Generator, height: int, width: int) -> List[Shape]:
    """1-6 shapes in drawing order; a shape is only kept if every shape's visible region stays clean."""
    wanted = int(rng.integers(MIN_INSTANCES, MAX_INSTANCES + 1))
    shapes: List[Shape] = []
    for _ in range(wanted):
        for _ in range(PLACEMENT_TRIES):
            candidate = _sample_shape(rng, height, width)
            if _occlusion_is_clean(shapes + [candidate]):
                shapes.append(candidate)
                break
    return shapes


def _sample_shape(rng: np.random.Generator, height: int, width: int) -> Shape:
    class_index = int(rng.integers(len(SHAPE_CLASSES)))
    name = SHAPE_CLASSES[class_index]
    short_side = min(height, width)
    min_radius = max(MIN_RADIUS_PX, RADIUS_RANGE[0] * short_side)
    radius = float(rng.uniform(min_radius, max(min_radius, RADIUS_RANGE[1] * short_side)))
    reach = radius * _SHAPE_EXTENT[name] + BORDER_MARGIN_PX
    centre = (float(rng.uniform(reach, width - 1 - reach)), float(rng.uniform(reach, height - 1 - reach)))
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    colour = tuple(int(c) for c in np.clip(np.array(SHAPE_PALETTE[class_index]) + jitter, 0, 255))
    return Shape(class_index, colour, _rasterise(name, centre, radius, angle, height, width))


def _shape_vertices(name: str, centre: Tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """(N, 2) float polygon vertices (x, y) for the polygonal classes."""
    outer = radius * _SHAPE_EXTENT[name]
    if name == 'star':  # 5 points: alternate outer and inner radius
        radii = np.tile([outer, outer * _STAR_INNER_RATIO], 5)
    else:
        radii = np.full({'square': 4, 'triangle': 3}[name], outer)
    thetas = angle + 2.0 * math.pi * np.arange(len(radii)) / len(radii)
    return np.stack([centre[0] + radii * np.cos(thetas), centre[1] + radii * np.sin(thetas)], axis=1)


def _rasterise(name: str, centre: Tuple[float, float], radius: float, angle: float, height: int,
               width: int) -> np.ndarray:
    """Boolean mask of one shape. Hard edges (no anti-aliasing): the label map must match the colours."""
    mask = np.zeros((height, width), dtype=np.uint8)
    subpixel = 4  # OpenCV fixed-point coordinates: 1/16 px precision for smooth sizes and positions
    scale = 1 << subpixel
    if name == 'circle':
        cv2.circle(mask, (round(centre[0] * scale), round(centre[1] * scale)), round(radius * scale), 1,
                   thickness=-1, lineType=cv2.LINE_8, shift=subpixel)
    else:
        vertices = np.round(_shape_vertices(name, centre, radius, angle) * scale).astype(np.int32)
        cv2.fillPoly(mask, [vertices], 1, lineType=cv2.LINE_8, shift=subpixel)
    return mask.astype(bool)


def _occlusion_is_clean(shapes: Sequence[Shape]) -> bool:
    """True when every visible region keeps enough of its shape, has no tiny fragments and no holes
    (COCO polygons cannot express holes; slivers only confuse training)."""
    for shape, visible in zip(shapes, visible_masks(shapes)):
        area = int(visible.sum())
        if area < MIN_VISIBLE_FRACTION * int(shape.mask.sum()):
            return False
        if area == int(shape.mask.sum()):
            continue  # untouched shapes are solid, single-piece polygons
        if _smallest_component_area(visible) < MIN_COMPONENT_AREA or _has_hole(visible):
            return False
    return True


def _smallest_component_area(mask: np.ndarray) -> int:
    # 8-connectivity, like the contours traced in mask_to_polygons
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].min()) if count > 1 else 0


def _has_hole(mask: np.ndarray) -> bool:
    """Background enclosed by the mask: more than one 4-connected background region once padded."""
    background = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    count, _ = cv2.connectedComponents(background, connectivity=4)
    return count - 1 > 1


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float (H, W, 3) muted background: a linear gradient between two greyish colours plus a soft
    ripple. Low saturation keeps it far from every palette colour; the texture stops a model from
    separating objects by flat-colour edges alone."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs, ys = xs / max(width - 1, 1), ys / max(height - 1, 1)
    greys = rng.uniform(70.0, 170.0, size=(2, 1))
    ends = greys + rng.uniform(-12.0, 12.0, size=(2, 3))  # slight tints
    direction = rng.uniform(0.0, 2.0 * math.pi)
    ramp = np.cos(direction) * xs + np.sin(direction) * ys
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-9)
    image = ends[0] + (ends[1] - ends[0]) * ramp[..., None]
    ripple_direction = rng.uniform(0.0, 2.0 * math.pi)
    frequency, phase, amplitude = rng.uniform(2.0, 6.0), rng.uniform(0.0, 2.0 * math.pi), rng.uniform(4.0, 10.0)
    ripple = np.sin(2.0 * math.pi * frequency * (np.cos(ripple_direction) * xs + np.sin(ripple_direction) * ys)
                    + phase)
    return image + amplitude * ripple[..., None]

