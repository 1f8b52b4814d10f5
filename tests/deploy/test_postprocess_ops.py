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


class GroupedNms(torch.nn.Module):
    def forward(self, boxes, scores):  # boxes [n, 5, 4], scores [n, 5]: five classes per row, as the R-CNN's
        labels = torch.arange(5).repeat(boxes.shape[0])
        return nms_topk(boxes.reshape(-1, 4), scores.reshape(-1), scores.reshape(-1) > 0.2, labels, 0.5, 60,
                        num_groups=5)


def test_nms_per_class_equals_torchvision_batched_nms_in_onnx_runtime(tmp_path):
    """The R-CNN's per-class NMS (one NonMaxSuppression per class) keeps what torchvision's batched_nms keeps
    (an independent class-aware NMS), best first, in PyTorch and in ONNX Runtime."""
    import torchvision
    generator = torch.Generator().manual_seed(1)
    xy = torch.rand(40, 5, 2, generator=generator) * 24  # crowded within each class
    boxes = torch.cat([xy, xy + 12 + torch.rand(40, 5, 2, generator=generator) * 12], dim=-1)
    scores = torch.rand(40, 5, generator=generator)
    flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
    candidates = torch.nonzero(flat_scores > 0.2).squeeze(1)
    reference = candidates[torchvision.ops.batched_nms(flat_boxes[candidates], flat_scores[candidates],
                                                       candidates % 5, 0.5)][:60]
    index, kept = GroupedNms()(boxes, scores)
    assert 20 <= kept.sum() < len(candidates)  # NMS suppressed some; fewer than 60 kept: padding rows too
    torch.testing.assert_close(index[kept], reference)

    path = tmp_path / 'nms.onnx'
    kwargs = dict(dynamo=False) if 'dynamo' in torch.onnx.export.__code__.co_varnames else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(GroupedNms(), (boxes, scores), str(path), opset_version=17, **kwargs)
    assert sum(node.op_type == 'NonMaxSuppression' for node in onnx.load(str(path)).graph.node) == 5
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]
    onnx_index, onnx_kept = session.run(None, dict(zip(names, (boxes.numpy(), scores.numpy()))))
    np.testing.assert_array_equal(onnx_kept, kept.numpy())
    np.testing.assert_array_equal(onnx_index[onnx_kept], reference.numpy())
