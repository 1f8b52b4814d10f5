"""The enlarged visualizers draw mmdet's / mmseg's pictures on a scaled image, annotations scaled with it."""
import cv2
import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.registry import VISUALIZERS
from mmengine.structures import InstanceData, PixelData
from mmseg.structures import SegDataSample

from mmdavit.datasets.synthetic import SHAPE_CLASSES, SHAPE_PALETTE
from tests.tools.common import DET_CONFIG, SEG_CONFIG

HEIGHT, WIDTH, SCALE = 64, 80, 3
GREY = 128
BOX = (10, 20, 40, 50)  # x1, y1, x2, y2 in the original image


def build(kind: str, name: str):
    visualizer = VISUALIZERS.build(dict(type=f'mmdavit.Enlarged{kind}LocalVisualizer', name=name, scale=SCALE))
    visualizer.dataset_meta = dict(classes=SHAPE_CLASSES, palette=[tuple(c) for c in SHAPE_PALETTE])
    return visualizer


def box_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    x1, y1, x2, y2 = BOX
    mask[y1:y2, x1:x2] = 1
    return mask


def drawn(path) -> np.ndarray:
    picture = cv2.imread(str(path))
    assert picture is not None, f'no picture at {path}'
    return picture[..., ::-1]  # RGB


def is_tinted(pixel: np.ndarray, class_index: int) -> bool:
    """Drawn over the grey image in (mostly) the class colour: the class's strongest channel stands out."""
    pixel = pixel.astype(int)
    return int(np.argmax(pixel)) == int(np.argmax(SHAPE_PALETTE[class_index])) and np.ptp(pixel) > 40


def test_detection_picture_is_enlarged_with_boxes_and_masks_scaled(tmp_path):
    image = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    sample = DetDataSample()
    sample.gt_instances = InstanceData(bboxes=torch.tensor([BOX], dtype=torch.float32), labels=torch.tensor([1]),
                                       masks=BitmapMasks(box_mask()[None], HEIGHT, WIDTH))
    sample.pred_instances = InstanceData(bboxes=torch.tensor([BOX], dtype=torch.float32), labels=torch.tensor([2]),
                                         scores=torch.tensor([0.9]), masks=torch.from_numpy(box_mask()[None] > 0))
    build('Det', 'test_enlarged_det').add_datasample('sample', image, sample, out_file=str(tmp_path / 'det.png'))
    picture = drawn(tmp_path / 'det.png')
    assert picture.shape == (HEIGHT * SCALE, 2 * WIDTH * SCALE, 3)  # ground truth | prediction
    centre = ((BOX[1] + BOX[3]) // 2 * SCALE, (BOX[0] + BOX[2]) // 2 * SCALE)
    for panel, class_index in ((0, 1), (1, 2)):
        x0 = panel * WIDTH * SCALE
        assert is_tinted(picture[centre[0], x0 + centre[1]], class_index)
        # Outside the scaled box (but inside the unscaled one's reach) the image stays untouched.
        assert (picture[(BOX[3] + 5) * SCALE, x0 + centre[1]] == GREY).all()
    # The sample passed in is not modified.
    assert sample.gt_instances.bboxes.tolist() == [list(map(float, BOX))]
    assert sample.pred_instances.masks.shape == (1, HEIGHT, WIDTH)


def test_segmentation_picture_is_enlarged_with_label_map_scaled(tmp_path):
    image = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    labels = torch.from_numpy(np.where(box_mask() > 0, 3, 255).astype(np.int64))[None]  # 255: ignored
    sample = SegDataSample(gt_sem_seg=PixelData(data=labels), pred_sem_seg=PixelData(data=labels.clone()))
    visualizer = build('Seg', 'test_enlarged_seg')
    visualizer.add_datasample('sample', image, sample, out_file=str(tmp_path / 'seg.png'), with_labels=False)
    picture = drawn(tmp_path / 'seg.png')
    assert picture.shape == (HEIGHT * SCALE, 2 * WIDTH * SCALE, 3)
    x1, y1, x2, y2 = (v * SCALE for v in BOX)
    for x0 in (0, WIDTH * SCALE):
        assert is_tinted(picture[y1 + 2, x0 + x1 + 2], 3) and is_tinted(picture[y2 - 3, x0 + x2 - 3], 3)
        assert not is_tinted(picture[y2 + 3, x0 + x2 + 3], 3)


def test_scale_below_one_is_refused():
    with pytest.raises(ValueError, match='scale must be >= 1'):
        VISUALIZERS.build(dict(type='mmdavit.EnlargedDetLocalVisualizer', name='test_enlarged_bad', scale=0.5))


@pytest.mark.parametrize('config', [DET_CONFIG, SEG_CONFIG], ids=['detection', 'segmentation'])
def test_demo_configs_draw_pictures_at_least_384_pixels_high(config):
    """The demo's 160x128 images gave unreadable labels at their own size (issue 13)."""
    cfg = Config.fromfile(str(config))
    assert cfg.visualizer.type.startswith('mmdavit.Enlarged')
    image_height = 128  # make demo: --size 128 160
    assert cfg.visualizer.scale * image_height >= 384
