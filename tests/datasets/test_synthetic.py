"""Tests for mmdavit.datasets.synthetic: determinism, exact COCO annotations, ADE label maps, and that
mmdet / mmseg's stock datasets read the output. Tiny sizes keep the file to a few seconds."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mmdavit.datasets import synthetic
from mmdavit.datasets.synthetic import (ADE_METAINFO, COCO_METAINFO, SHAPE_CLASSES, SHAPE_PALETTE,
                                        make_ade_semantic, make_coco_instances, mask_to_polygons)

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VAL, SIZE = 6, 3, (96, 128)
NUM_CLASSES = len(SHAPE_CLASSES)
MAKERS = {'coco': make_coco_instances, 'ade': make_ade_semantic}
# A shape pixel is its class colour +- jitter (15) + Gaussian noise (sigma 5): 45 is > 6 sigma of slack.
COLOUR_TOLERANCE = 45
# Background is grey +- 12 tint (+ noise); every shape colour has max - min channel >= 130 before noise.
SATURATION_THRESHOLD = 80
# pycocotools' own numpy-2 deprecation noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def make(fmt: str, root: Path, **overrides) -> dict:
    kwargs = dict(num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=0)
    kwargs.update(overrides)
    return MAKERS[fmt](root, **kwargs)


def all_files(root: Path) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob('*')) if path.is_file()}


def saturation(image: np.ndarray) -> np.ndarray:
    return image.max(axis=2).astype(int) - image.min(axis=2).astype(int)


def colour_distance(image: np.ndarray, colour) -> np.ndarray:
    return np.abs(image.astype(int) - np.array(colour)).max(axis=2)


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('coco')
    make('coco', root)
    return root


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('ade')
    make('ade', root)
    return root


@pytest.fixture
def roots(coco_root, ade_root) -> dict:
    return {'coco': coco_root, 'ade': ade_root}


# ----------------------------------------------------------------------------------------------------
# Determinism, reuse, input checks
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('fmt', ['coco', 'ade'])
def test_same_seed_gives_byte_identical_files(fmt, roots, tmp_path):
    make(fmt, tmp_path)
    first, second = all_files(roots[fmt]), all_files(tmp_path)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


@pytest.mark.parametrize('fmt', ['coco', 'ade'])
def test_different_seed_changes_every_image(fmt, roots, tmp_path):
    make(fmt, tmp_path, seed=1)
    first, second = all_files(roots[fmt]), all_files(tmp_path)
    images = [name for name in first if name.endswith('.jpg') or '2017/' in name]
    assert len(images) == NUM_TRAIN + NUM_VAL
    assert all(first[name] != second[name] for name in images)


def test_existing_dataset_is_reused_and_force_regenerates(tmp_path):
    first = make('ade', tmp_path, num_train=2, num_val=1)
    label = tmp_path / 'annotations/training/ADE_train_00000001.png'
    label.write_bytes(b'sentinel')  # survives only if the second call really skips generation
    second = make('ade', tmp_path, num_train=2, num_val=1)
    assert (first['reused'], second['reused']) == (False, True)
    assert second['splits'] == first['splits']
    assert label.read_bytes() == b'sentinel'
    forced = make('ade', tmp_path, num_train=2, num_val=1, force=True)
    assert forced['reused'] is False and label.read_bytes() != b'sentinel'


@pytest.mark.parametrize('fmt', ['coco', 'ade'])
def test_rerun_with_other_params_regenerates_without_stale_files(fmt, tmp_path):
    make(fmt, tmp_path, num_train=4, num_val=1)
    summary = make(fmt, tmp_path, num_train=2, num_val=1)
    assert summary['reused'] is False
    img_dir = Path(summary['splits']['train']['img_dir'])
    assert len(list(img_dir.iterdir())) == 2
    if fmt == 'ade':
        assert len(list(Path(summary['splits']['train']['seg_map_dir']).iterdir())) == 2


def test_incomplete_dataset_is_regenerated(tmp_path):
    make('coco', tmp_path, num_train=2, num_val=1)
    (tmp_path / 'val2017/000000000001.png').unlink()
    summary = make('coco', tmp_path, num_train=2, num_val=1)
    assert summary['reused'] is False and (tmp_path / 'val2017/000000000001.png').is_file()


def test_foreign_images_in_ade_folders_are_refused(tmp_path):
    foreign = tmp_path / 'images/training/holiday.jpg'
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b'not ours')
    with pytest.raises(FileExistsError, match='holiday.jpg'):
        make('ade', tmp_path)
    assert foreign.read_bytes() == b'not ours'


@pytest.mark.parametrize('fmt', ['coco', 'ade'])
@pytest.mark.parametrize('overrides, message', [
    (dict(num_train=0), 'num_train must be an integer >= 1'),
    (dict(num_val=-2), 'num_val must be an integer >= 1'),
    (dict(num_train=2.5), 'num_train must be an integer'),
    (dict(seed=-1), 'seed must be a non-negative integer'),
    (dict(image_size=(16, 128)), r'too small .* >= 32 px'),
    (dict(image_size=(96, )), r'\(height, width\) pair'),
    (dict(image_size='96x128'), r'\(height, width\) pair'),
])
def test_bad_arguments_raise_errors_naming_the_cause(fmt, overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        make(fmt, tmp_path / 'out', **overrides)
    assert not (tmp_path / 'out').exists()


def test_summary_reports_counts_and_paths(roots):
    coco = json.loads((roots['coco'] / 'annotations/instances_val2017.json').read_text())
    summary = make('coco', roots['coco'])
    assert summary['classes'] == list(SHAPE_CLASSES) and summary['image_size'] == list(SIZE)
    assert summary['splits']['val']['images'] == len(coco['images']) == NUM_VAL
    assert summary['splits']['val']['instances'] == len(coco['annotations'])
    assert Path(summary['splits']['train']['ann_file']).is_file()


def test_metainfo_matches_classes_and_palette():
    for metainfo in (COCO_METAINFO, ADE_METAINFO):
        assert tuple(metainfo['classes']) == SHAPE_CLASSES
        assert [tuple(c) for c in metainfo['palette']] == [tuple(c) for c in SHAPE_PALETTE]
    assert len(set(SHAPE_PALETTE)) == NUM_CLASSES
    assert 3 <= NUM_CLASSES <= 5


# ----------------------------------------------------------------------------------------------------
# COCO annotations
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('mask_rows', [
    ['1'],
    ['10', '01'],  # diagonal touch: one 8-connected piece
    ['110', '100', '000'],  # concave corner
    ['0000', '0110', '0110', '0000'],
    ['1001', '0000', '1001'],  # four separate pieces at the borders
    ['0100', '1110', '0100', '1000'],
    ['11111', '10001', '10101', '10000', '11111'],  # a "C" with a separate pixel in its mouth
])
def test_mask_to_polygons_round_trips_exactly_through_pycocotools(mask_rows):
    mask = np.array([[c == '1' for c in row] for row in mask_rows])
    height, width = mask.shape
    rles = mask_utils.frPyObjects(mask_to_polygons(mask), height, width)
    np.testing.assert_array_equal(mask_utils.decode(mask_utils.merge(rles)).astype(bool), mask)


def test_sampled_scenes_are_occluded_yet_exactly_representable():
    """Scene invariants over many seeds: occlusion happens (so the overlap checks below are not
    vacuous), and every visible region, however cut up, round-trips exactly through COCO polygons."""
    occluded = 0
    for seed in range(30):
        image, shapes = synthetic.render_scene(np.random.default_rng(seed), SIZE)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8 and 1 <= len(shapes) <= 6
        for shape, visible in zip(shapes, synthetic.visible_masks(shapes)):
            occluded += int(visible.sum() < shape.mask.sum())
            assert visible.sum() >= synthetic.MIN_VISIBLE_FRACTION * shape.mask.sum()
            _, _, stats, _ = cv2.connectedComponentsWithStats(visible.astype(np.uint8), connectivity=8)
            assert stats[1:, cv2.CC_STAT_AREA].min() >= synthetic.MIN_COMPONENT_AREA, 'sliver kept'
            rles = mask_utils.frPyObjects(mask_to_polygons(visible), *SIZE)
            np.testing.assert_array_equal(mask_utils.decode(mask_utils.merge(rles)).astype(bool), visible)
    assert occluded >= 3


def disc(centre, radius, size=(64, 64)) -> np.ndarray:
    ys, xs = np.mgrid[:size[0], :size[1]]
    return (xs - centre[0])**2 + (ys - centre[1])**2 <= radius**2


@pytest.mark.parametrize('top, clean', [
    (disc((32, 32), 5), False),  # inside the big disc: would punch a hole COCO polygons cannot express
    (disc((60, 32), 12), True),  # overlaps the rim: a bitten disc is fine
    (disc((32, 32), 19.5), False),  # leaves only a thin ring, below the visible-fraction rule
])
def test_occlusion_rules_reject_holes_and_near_total_cover(top, clean):
    """The sampler's acceptance rule (private, so tested directly: real scenes rarely hit these cases)."""
    shapes = [synthetic.Shape(0, (230, 30, 30), disc((32, 32), 20)), synthetic.Shape(1, (30, 190, 50), top)]
    assert synthetic._occlusion_is_clean(shapes) is clean


def test_coco_json_has_images_categories_and_instance_counts(coco_root):
    for split, count in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        coco = COCO(str(coco_root / f'annotations/instances_{split}2017.json'))
        assert [coco.cats[i]['name'] for i in sorted(coco.cats)] == list(SHAPE_CLASSES)
        assert sorted(coco.cats) == list(range(1, NUM_CLASSES + 1))
        assert len(coco.imgs) == count
        for image_id, info in coco.imgs.items():
            with Image.open(coco_root / f'{split}2017' / info['file_name']) as image:
                assert image.size == (info['width'], info['height']) == (SIZE[1], SIZE[0])
                assert image.mode == 'RGB'
            assert 1 <= len(coco.getAnnIds(imgIds=[image_id])) <= 6


@pytest.mark.parametrize('split', ['train', 'val'])
def test_coco_masks_match_area_bbox_and_colours_without_overlap(coco_root, split):
    coco = COCO(str(coco_root / f'annotations/instances_{split}2017.json'))
    for image_id, info in coco.imgs.items():
        image = np.asarray(Image.open(coco_root / f'{split}2017' / info['file_name']))
        covered = np.zeros(image.shape[:2], dtype=int)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            assert ann['iscrowd'] == 0 and isinstance(ann['segmentation'], list)
            assert all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in ann['segmentation'])
            mask = coco.annToMask(ann).astype(bool)
            assert mask.sum() == ann['area'] > 0
            x, y, w, h = ann['bbox']
            assert list(mask_utils.toBbox(coco.annToRLE(ann))) == [x, y, w, h]
            inside = np.zeros_like(mask)
            inside[y:y + h, x:x + w] = True
            assert not (mask & ~inside).any()
            colour = SHAPE_PALETTE[ann['category_id'] - 1]
            near = colour_distance(image[mask][None], colour)[0] <= COLOUR_TOLERANCE
            assert near.mean() > 0.99, f'image {image_id} ann {ann["id"]}: colour does not match its class'
            covered += mask
        assert covered.max() <= 1, f'image {image_id}: visible masks overlap'
        # every saturated (shape-coloured) pixel is annotated, and nothing else is
        mismatch = (saturation(image) > SATURATION_THRESHOLD) != (covered == 1)
        assert mismatch.mean() < 0.001, f'image {image_id}: annotations do not cover the drawn shapes'


# ----------------------------------------------------------------------------------------------------
# ADE label maps
# ----------------------------------------------------------------------------------------------------
def ade_pairs(ade_root: Path):
    for folder in ('training', 'validation'):
        for image_path in sorted((ade_root / 'images' / folder).glob('*.jpg')):
            yield image_path, ade_root / 'annotations' / folder / (image_path.stem + '.png')


def test_ade_layout_sizes_and_label_values(ade_root):
    pairs = list(ade_pairs(ade_root))
    assert len(pairs) == NUM_TRAIN + NUM_VAL
    seen = set()
    for image_path, label_path in pairs:
        with Image.open(image_path) as image, Image.open(label_path) as label:
            assert image.format == 'JPEG' and image.mode == 'RGB'
            assert label.format == 'PNG' and label.mode == 'L'
            assert image.size == label.size == (SIZE[1], SIZE[0])
            values = set(np.unique(np.asarray(label)).tolist())
        assert values <= set(range(NUM_CLASSES + 1)) and 0 in values and len(values) >= 2
        seen |= values
    assert seen == set(range(NUM_CLASSES + 1)), 'tiny dataset should still show every class'


def test_ade_labels_agree_with_drawn_colours(ade_root):
    kernel = np.ones((5, 5), np.uint8)  # compare away from edges, where JPEG blurs colours
    for image_path, label_path in ade_pairs(ade_root):
        image = np.asarray(Image.open(image_path))
        label = np.asarray(Image.open(label_path))
        for value in np.unique(label):
            interior = cv2.erode((label == value).astype(np.uint8), kernel).astype(bool)
            if interior.sum() < 20:
                continue
            if value == 0:
                agree = saturation(image[interior][None])[0] <= SATURATION_THRESHOLD
            else:
                agree = colour_distance(image[interior][None], SHAPE_PALETTE[value - 1])[0] <= COLOUR_TOLERANCE
            assert agree.mean() > 0.99, f'{image_path.name}: label {value} disagrees with its colours'


# ----------------------------------------------------------------------------------------------------
# mmdet / mmseg read the data
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('split, count', [('train', NUM_TRAIN), ('val', NUM_VAL)])
def test_mmdet_coco_dataset_loads_images_boxes_and_masks(coco_root, split, count):
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs

    dataset = CocoDataset(
        data_root=str(coco_root), ann_file=f'annotations/instances_{split}2017.json',
        data_prefix=dict(img=f'{split}2017/'), metainfo=dict(classes=SHAPE_CLASSES),
        pipeline=[LoadImageFromFile(), LoadAnnotations(with_bbox=True, with_mask=True), PackDetInputs()])
    assert len(dataset) == count
    assert dataset.cat_ids == list(range(1, NUM_CLASSES + 1))
    coco = json.loads((coco_root / f'annotations/instances_{split}2017.json').read_text())
    areas = {}
    for ann in coco['annotations']:
        areas.setdefault(ann['image_id'], []).append(ann['area'])
    for index in range(len(dataset)):
        item = dataset[index]
        gt = item['data_samples'].gt_instances
        image_id = item['data_samples'].img_id
        assert tuple(item['inputs'].shape) == (3, *SIZE)
        assert len(gt) == len(areas[image_id]) >= 1
        assert 0 <= int(gt.labels.min()) and int(gt.labels.max()) < NUM_CLASSES
        assert gt.masks.masks.shape[1:] == SIZE
        assert gt.masks.areas.tolist() == areas[image_id]
        boxes = gt.bboxes.tensor
        assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())


@pytest.mark.parametrize('folder, count', [('training', NUM_TRAIN), ('validation', NUM_VAL)])
def test_mmseg_dataset_loads_with_reduce_zero_label(ade_root, folder, count):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs

    dataset = BaseSegDataset(
        data_root=str(ade_root), data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'),
        metainfo=ADE_METAINFO, reduce_zero_label=True,
        pipeline=[LoadImageFromFile(), LoadAnnotations(), PackSegInputs()])
    assert len(dataset) == count
    assert tuple(dataset.metainfo['classes']) == SHAPE_CLASSES and dataset.label_map is None
    for index in range(len(dataset)):
        item = dataset[index]
        seg = item['data_samples'].gt_sem_seg.data[0].numpy()
        raw = np.asarray(Image.open(item['data_samples'].seg_map_path))
        assert tuple(item['inputs'].shape) == (3, *SIZE) and seg.shape == SIZE
        assert set(np.unique(seg).tolist()) <= set(range(NUM_CLASSES)) | {255}
        np.testing.assert_array_equal(seg == 255, raw == 0)  # background -> ignore
        np.testing.assert_array_equal(seg[raw > 0], raw[raw > 0] - 1)


def test_mmseg_ade20k_dataset_rejects_custom_classes(ade_root):
    """Why configs use BaseSegDataset: ADE20KDataset only takes a subset of its 150 class names. If
    mmseg ever lifts this, configs may switch to type='ADE20KDataset'."""
    from mmseg.datasets import ADE20KDataset

    with pytest.raises(ValueError, match='not a subset'):
        ADE20KDataset(data_root=str(ade_root), metainfo=ADE_METAINFO,
                      data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / 'tools/generate_synthetic_data.py'), *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_both_datasets_and_prints_summaries(tmp_path):
    result = run_cli('all', '--out', str(tmp_path), '--num-train', '2', '--num-val', '1', '--size', '48', '64',
                     '--seed', '3')
    assert result.returncode == 0, result.stderr
    decoder, text, summaries = json.JSONDecoder(), result.stdout.strip(), []
    while text:
        summary, end = decoder.raw_decode(text)
        summaries.append(summary)
        text = text[end:].strip()
    assert [s['format'] for s in summaries] == ['coco', 'ade']
    assert all(s['seed'] == 3 and s['image_size'] == [48, 64] for s in summaries)
    assert len(list((tmp_path / 'coco/train2017').iterdir())) == 2
    assert len(list((tmp_path / 'ade/images/validation').iterdir())) == 1
    # same output as the library call with the same arguments
    make('ade', tmp_path / 'direct', num_train=2, num_val=1, image_size=(48, 64), seed=3)
    assert all_files(tmp_path / 'ade') == all_files(tmp_path / 'direct')


def test_cli_reports_bad_size(tmp_path):
    result = run_cli('coco', '--out', str(tmp_path), '--size', '8', '8')
    assert result.returncode == 2
    assert 'too small' in result.stderr and 'Traceback' not in result.stderr
