"""mmdet's and mmseg's local visualizers, drawing on an enlarged copy of the image.

Both size their label text in pixels (mmdet: 6 or 13 px depending on the box area; mmseg: in proportion to
the image's short side), so on small images such as the demo's 160x128 shapes the class names and scores
cannot be read. These subclasses enlarge the image ``scale`` times, scale the annotations and predictions
with it, and let the upstream visualizer draw as usual. In a config::

    visualizer = dict(type='mmdavit.EnlargedDetLocalVisualizer', scale=3)  # or EnlargedSegLocalVisualizer

The same picture then comes out of training-time validation, ``mim test --show-dir`` and the inferencers.
"""
from typing import Tuple

import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from mmdet.structures.bbox import BaseBoxes
from mmdet.structures.mask import BitmapMasks, PolygonMasks
from mmdet.visualization import DetLocalVisualizer
from mmengine.structures import InstanceData, PixelData
from mmseg.visualization import SegLocalVisualizer

from .registry import VISUALIZERS

PIXEL_FIELDS = ('gt_sem_seg', 'pred_sem_seg', 'gt_panoptic_seg', 'pred_panoptic_seg')
INSTANCE_FIELDS = ('gt_instances', 'pred_instances')


def check_scale(scale: float) -> float:
    if not scale >= 1:
        raise ValueError(f'scale must be >= 1 (how many times the picture is enlarged), got {scale}')
    return float(scale)


def enlarge_image(image: np.ndarray, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    return mmcv.imresize(image, (round(width * scale), round(height * scale)), interpolation='bilinear')


def enlarge_pixel_data(pixel_data: PixelData, size: Tuple[int, int]) -> PixelData:
    """Label maps: nearest neighbour, so that no label is invented between two classes."""
    data = pixel_data.data
    enlarged = F.interpolate(data[None].float(), size=size, mode='nearest')[0].to(data.dtype)
    return PixelData(data=enlarged, metainfo=pixel_data.metainfo)


def enlarge_instances(instances: InstanceData, size: Tuple[int, int], factors: Tuple[float, float]) -> InstanceData:
    """Boxes times the (x, y) factors; masks resized to ``size`` (h, w), tensor masks bilinearly then
    thresholded so that enlarged outlines stay smooth."""
    enlarged = instances.clone()
    if 'bboxes' in instances:
        boxes = instances.bboxes.tensor if isinstance(instances.bboxes, BaseBoxes) else instances.bboxes
        enlarged.bboxes = boxes * boxes.new_tensor(factors).repeat(2)
    if 'masks' in instances:
        masks = instances.masks
        if isinstance(masks, (BitmapMasks, PolygonMasks)):
            enlarged.masks = masks.resize(size)
        else:
            masks = torch.as_tensor(masks)
            resized = F.interpolate(masks[None].float(), size=size, mode='bilinear', align_corners=False)[0]
            enlarged.masks = resized >= 0.5
    return enlarged


def enlarge_sample(sample, scale: float, image_shape: Tuple[int, int]):
    """A copy of a Det/SegDataSample whose drawn fields match the image enlarged ``scale`` times."""
    height, width = image_shape
    size = (round(height * scale), round(width * scale))
    factors = (size[1] / width, size[0] / height)
    enlarged = sample.clone()
    for field in INSTANCE_FIELDS:
        if field in sample:
            setattr(enlarged, field, enlarge_instances(getattr(sample, field), size, factors))
    for field in PIXEL_FIELDS:
        if field in sample:
            setattr(enlarged, field, enlarge_pixel_data(getattr(sample, field), size))
    return enlarged


class EnlargedDrawing:
    """Mixin for a Det/Seg local visualizer: ``add_datasample`` draws on the image enlarged ``scale``
    (>= 1) times, with the sample's boxes, masks and label maps scaled to match."""

    # `name` spelt out: mmengine's ManagerMixin insists on seeing it in the signature.
    def __init__(self, name: str = 'visualizer', *args, scale: float = 1.0, **kwargs):
        self.scale = check_scale(scale)
        super().__init__(name, *args, **kwargs)

    def add_datasample(self, name: str, image: np.ndarray, data_sample=None, *args, **kwargs) -> None:
        if data_sample is not None:
            data_sample = enlarge_sample(data_sample, self.scale, image.shape[:2])
        super().add_datasample(name, enlarge_image(image, self.scale), data_sample, *args, **kwargs)


@VISUALIZERS.register_module()
class EnlargedDetLocalVisualizer(EnlargedDrawing, DetLocalVisualizer):
    """mmdet's ``DetLocalVisualizer``, drawing on the image enlarged ``scale`` times."""


@VISUALIZERS.register_module()
class EnlargedSegLocalVisualizer(EnlargedDrawing, SegLocalVisualizer):
    """mmseg's ``SegLocalVisualizer``, drawing on the image enlarged ``scale`` times."""
