"""The export wrappers' own tensor ops (mmdavit/deploy/postprocess.py) through the TorchScript exporter and
ONNX Runtime, without mmdet: the part of the detection export that torch 2.1 can be checked on here
(make test-oldest runs no whole-model export). Compared with the same ops run eagerly in torch."""
import warnings

import numpy as np
import pytest
import torch

from mmdavit.deploy.postprocess import multi_level_roi_align, nms_topk, paste_masks

onnx = pytest.importorskip('onnx')
onnxruntime = pytest.importorskip('onnxruntime')


class SingleRoIExtractor:  # the attributes multi_level_roi_align reads from mmdet's extractor
    def __init__(self):
        layer = type('RoIAlign', (), {})
        self.roi_layers = []
        for stride in (4, 8):
            roi = layer()
            roi.output_size, roi.spatial_scale, roi.sampling_ratio, roi.aligned = (7, 7), 1 / stride, 0, True
            self.roi_layers.append(roi)
        self.finest_scale = 8


class Ops(torch.nn.Module):
    def forward(self, feat0, feat1, boxes, scores, groups):
        index, kept = nms_topk(boxes, scores, scores > 0.3, groups, 0.5, 40)
        picked = torch.where(kept[:, None], boxes[index], torch.zeros_like(boxes[index]))
        rois = torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)
        pooled = multi_level_roi_align([feat0, feat1], rois, SingleRoIExtractor())
        masks = paste_masks(pooled[:, 0].sigmoid(), picked, 40, 48)
        return index, kept.long(), pooled, masks


def test_postprocess_ops_match_in_onnx_runtime(tmp_path):
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=generator) * 16  # crowded: NMS suppresses most
    boxes = torch.cat([xy, xy + 16 + torch.rand(60, 2, generator=generator) * 16], dim=1)
    inputs = (torch.randn(1, 4, 10, 12, generator=generator), torch.randn(1, 4, 5, 6, generator=generator), boxes,
              torch.rand(60, generator=generator), torch.randint(0, 3, (60, ), generator=generator))
    path = tmp_path / 'ops.onnx'
    kwargs = dict(dynamo=False) if 'dynamo' in torch.onnx.export.__code__.co_varnames else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(Ops(), inputs, str(path), opset_version=17, **kwargs,
                          input_names=['feat0', 'feat1', 'boxes', 'scores', 'groups'])
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert {'NonMaxSuppression', 'RoiAlign', 'GridSample', 'TopK'} <= {node.op_type for node in proto.graph.node}
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]
    actual = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})
    with torch.no_grad():
        expected = Ops()(*inputs)
    kept = expected[1].numpy().astype(bool)
    assert 3 <= kept.sum() < min(40, int((inputs[3] > 0.3).sum()))  # some boxes suppressed, padding rows
    np.testing.assert_array_equal(actual[1], expected[1].numpy())
    np.testing.assert_array_equal(actual[0][kept], expected[0].numpy()[kept])
    np.testing.assert_allclose(actual[2], expected[2].numpy(), atol=1e-5)
    np.testing.assert_allclose(actual[3], expected[3].numpy(), atol=1e-5)
