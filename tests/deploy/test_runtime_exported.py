"""The torch-free runtime on a graph from the real exporter: a narrow Mask R-CNN twin trained a few iterations
(tests/deploy/conftest.py), exported with the TorchScript exporter (every torch; the dynamo one is covered by the
export tests), then the runtime's final result on image files of other sizes against mmdet's own
``inference_detector`` on the same files (same labels, boxes IoU > 0.99, scores within 1e-4, masks IoU > 0.99 in
the original image)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmdavit.deploy import runtime


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


# An image of another aspect ratio (100 x 111 -> 128 x 142 in a 128 x 160 graph) leaves padding on the right:
# mmdet clips proposals and boxes to 128 x 142, and so does the graph, given that shape as its image_shapes input
# (with the graph's fixed size instead, large boxes at the right edge differed: IoU 0.89). mmdet pads 142 to 160
# too (size divisor 32), so its backbone sees the same input as the graph's.
SIZES = [pytest.param((192, 240), id='enlarged'), pytest.param((64, 80), id='shrunk'),
         pytest.param((100, 111), id='other_aspect')]


@pytest.mark.parametrize('size', SIZES)
def test_exported_mask_rcnn_runtime_equals_mmdet_inference(trained, coco_data, tmp_path, size):
    from mmdet.apis import inference_detector

    from mmdavit.deploy.export import build_wrapper, export_onnx, load_model

    config, checkpoint = trained('maskrcnn')
    model, cfg = load_model(str(config), str(checkpoint))
    image_size = (128, 160)  # the config's test Resize scale (160, 128)
    wrapper = build_wrapper(model, cfg, image_size=image_size)
    path = tmp_path / 'maskrcnn.onnx'
    export_onnx(wrapper, model, cfg, str(path), image_size=image_size, config_path=str(config),
                exporter='torchscript', log=lambda line: None)

    onnx_model = runtime.OnnxModel(str(path))
    assert onnx_model.task == 'instance' and onnx_model.classes == ['circle', 'square', 'triangle', 'star']
    source = cv2.imread(str(sorted(Path(coco_data, 'val2017').glob('*.png'))[0]))
    image_path = tmp_path / 'image.png'
    cv2.imwrite(str(image_path), cv2.resize(source, size[::-1], interpolation=cv2.INTER_LINEAR))
    ours = onnx_model.predict([runtime.read_image(str(image_path))], score_thr=0.0)[0]
    theirs = inference_detector(model, str(image_path)).pred_instances
    assert len(theirs) > 0, 'the trained twin detects nothing: the comparison would be empty'
    assert len(ours.scores) == len(theirs)
    ious = box_iou(theirs.bboxes.numpy(), ours.boxes)
    for index in range(len(theirs)):  # each mmdet detection: the same label, box, score and mask in ours
        candidates = np.flatnonzero(ours.labels == int(theirs.labels[index]))
        match = candidates[np.argmax(ious[index, candidates])]
        assert ious[index, match] > 0.99
        assert abs(ours.scores[match] - float(theirs.scores[index])) < 1e-4
        mask, reference = ours.masks[match], theirs.masks[index].numpy()
        union = np.logical_or(mask, reference).sum()
        assert union == 0 or np.logical_and(mask, reference).sum() / union > 0.99
