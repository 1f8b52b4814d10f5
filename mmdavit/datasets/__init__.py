"""Datasets for mmdavit demos and tests: seeded synthetic shapes in the COCO and ADE20K layouts.

Light on purpose (numpy, Pillow, OpenCV): nothing here registers into mmdet / mmseg, the generated data
is read by their stock ``CocoDataset`` and ``BaseSegDataset``.
"""
from .synthetic import (ADE_METAINFO, COCO_METAINFO, SHAPE_CLASSES, SHAPE_PALETTE, make_ade_semantic,
                        make_coco_instances)

__all__ = ['ADE_METAINFO', 'COCO_METAINFO', 'SHAPE_CLASSES', 'SHAPE_PALETTE', 'make_ade_semantic',
           'make_coco_instances']
