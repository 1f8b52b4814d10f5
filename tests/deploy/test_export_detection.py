"""Whole-model ONNX export of RetinaNet, Mask R-CNN and Cascade Mask R-CNN (narrow DaViT twins trained for a few
iterations on synthetic shapes), run in ONNX Runtime and compared with the PyTorch model's ``predict`` on the
same preprocessed input (``mmdavit.deploy.export.verify``: same label, box IoU > 0.99, scores within 1e-4,
masks IoU > 0.99; it raises otherwise).

Sizes: 128 x 160 (a multiple of 32: the input is the image) and 120 x 152 (not one: the configs'
pad_size_divisor=32 pads the input to 128 x 160; boxes are clipped and masks pasted at 120 x 152). Each family
is exported once with each exporter, the two at different sizes (dynamo exports cost ~20 s of CPU each here);
torch < 2.5 has no dynamo exporter and skips those cases. Besides the two validation images, each file is
verified on a portrait image (160 x 100), which leaves padding on the right of the frame: the graph's
``image_shapes`` input tells it where the image ends, as ``img_shape`` tells mmdet.
"""
import importlib.util
import re

import pytest
import torch

from mmdavit.compat import torch_at_least
from mmdavit.deploy import export as deploy_export
from mmdavit.deploy.export import (ExportError, VerificationError, build_wrapper, export_onnx, load_inputs,
                                   load_model, read_metadata, verify)
from tests.deploy.conftest import verification_images
from tests.tools.common import load_tool

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

CLASSES = ['circle', 'square', 'triangle', 'star']
INPUT_SIZE = [128, 160]  # both image sizes pad to this
DYNAMO = torch_at_least(deploy_export.DYNAMO_MIN_TORCH)
requires_dynamo = pytest.mark.skipif(
    not DYNAMO, reason=f'the dynamo ONNX exporter needs torch >= {deploy_export.DYNAMO_MIN_TORCH} '
                       f'(this is torch {torch.__version__})')
# .venv-oldest (torch 2.1) has no mmcv build, hence no mmdet model: there tests/deploy/test_postprocess_ops.py
# checks the wrappers' own ops through torch 2.1's TorchScript exporter.
requires_mmdet = pytest.mark.skipif(importlib.util.find_spec('mmdet') is None,
                                    reason='needs mmdet (and mmcv compiled for this torch)')
# Eight training iterations leave the cascade's three-stage scores low: a lower threshold keeps detections on
# both validation images (the export and predict both take it from test_cfg).
SCORE_THR = {'retinanet': None, 'maskrcnn': None, 'cascade': 0.02}


def export_and_verify(trained, family, size, exporter, tmp_path, batch_size=1, **options):
    config, checkpoint = trained(family)
    model, cfg = load_model(str(config), str(checkpoint))
    wrapper = build_wrapper(model, cfg, image_size=size, score_thr=SCORE_THR[family], **options)
    path = tmp_path / f'{family}.onnx'
    export_onnx(wrapper, model, cfg, str(path), image_size=size, config_path=str(config), exporter=exporter,
                batch_size=batch_size)
    inputs, image_shapes = load_inputs(model, cfg, verification_images(cfg, tmp_path), size)
    figures = verify(str(path), wrapper, model, inputs, image_shapes)
    return path, figures, (model, wrapper, inputs, image_shapes)


def check_file(path, family, size, exporter, batch_size=1, mask_shape=(28, 28)):
    proto = onnx.load(str(path))
    assert {node.domain for node in proto.graph.node} <= {'', 'ai.onnx'}  # no custom-op library needed
    ops = {node.op_type for node in proto.graph.node}
    assert 'NonMaxSuppression' in ops and ('RoiAlign' in ops) == (family != 'retinanet'), sorted(ops)
    meta = read_metadata(str(path))
    assert meta['input_size'] == INPUT_SIZE and meta['image_size'] == list(size)
    assert meta['task'] == ('detection' if family == 'retinanet' else 'instance')
    assert meta['exporter'] == exporter and meta['opset'] >= 17
    assert meta['classes'] == CLASSES and len(meta['palette']) == 4
    assert meta['preprocess']['pad_size_divisor'] == 32 and meta['preprocess']['bgr_to_rgb'] is True
    assert meta['preprocess']['resize'] == {'scale': [size[1], size[0]], 'keep_ratio': True}
    images, image_shapes = proto.graph.input
    assert [d.dim_value for d in images.type.tensor_type.shape.dim] == [batch_size, 3] + INPUT_SIZE
    assert image_shapes.name == 'image_shapes' and image_shapes.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in image_shapes.type.tensor_type.shape.dim] == [batch_size, 2]
    k = meta['outputs']['dets']['shape'][1]
    assert meta['outputs']['dets']['shape'] == [batch_size, k, 5]
    assert meta['outputs']['labels']['shape'] == [batch_size, k]
    if family != 'retinanet':
        assert meta['outputs']['masks']['shape'] == [batch_size, k, *mask_shape]
        assert meta['mask_size'] == (28 if mask_shape == (28, 28) else None)


def assert_compared_something(figures):
    # verify() raised on any disagreement; here: there were detections to compare (a briefly trained model may
    # find nothing in one image, e.g. on torch 2.1), and an image without any in PyTorch has none in ONNX either
    assert sum(f['matched'] for f in figures) > 0, figures
    assert all(f['onnx'] == 0 for f in figures if f['reference'] == 0), figures
    assert all(f['matched'] + f['unmatched'] >= f['reference'] for f in figures), figures


@pytest.mark.parametrize('family,size,exporter', [
    pytest.param('retinanet', (120, 152), 'dynamo', marks=[requires_mmdet, requires_dynamo]),
    pytest.param('maskrcnn', (128, 160), 'dynamo', marks=[requires_mmdet, requires_dynamo]),
    pytest.param('cascade', (120, 152), 'dynamo', marks=[requires_mmdet, requires_dynamo]),
    pytest.param('cascade', (128, 160), 'torchscript', marks=requires_mmdet),
], ids=lambda v: f'{v[0]}x{v[1]}' if isinstance(v, tuple) else v)
def test_onnx_runtime_matches_predict(trained, tmp_path, family, size, exporter):
    path, figures, _ = export_and_verify(trained, family, size, exporter, tmp_path)
    assert_compared_something(figures)
    check_file(path, family, size, exporter)


@requires_mmdet
def test_pasted_masks_and_a_wrong_reference_is_caught(trained, tmp_path):
    """Mask R-CNN, TorchScript exporter, 120 x 152, masks pasted in the graph at 120 x 152. Then the reference
    is changed (a higher score threshold in the model's test_cfg): verify must fail, naming the detections
    that have no counterpart."""
    size = (120, 152)
    path, figures, (model, wrapper, inputs, image_shapes) = export_and_verify(trained, 'maskrcnn', size, 'torchscript',
                                                                 tmp_path, paste_masks=True)
    assert_compared_something(figures)
    assert all('min_mask_iou' in f for f in figures)
    check_file(path, 'maskrcnn', size, 'torchscript', mask_shape=size)

    scores = [f['reference'] for f in figures]
    model.roi_head.test_cfg['score_thr'] = 0.5 if max(scores) else 0.0
    with pytest.raises(VerificationError, match='without a counterpart'):
        verify(str(path), wrapper, model, inputs, image_shapes, log=lambda line: None)


@requires_mmdet
def test_tool_exports_and_verifies_batch_of_two(trained, tmp_path, capsys):
    """tools/deployment/export_onnx.py end to end (RetinaNet, TorchScript, 128 x 160, batch 2): prints what it
    wrote, the opset, the input size and the outputs, then the verification figures; exit status 0."""
    main = load_tool('deployment/export_onnx.py').main
    config, checkpoint = trained('retinanet')
    out = tmp_path / 'retinanet.onnx'
    status = main([str(config), str(checkpoint), '--out', str(out), '--shape', '128', '160',
                   '--exporter', 'torchscript', '--batch-size', '2', '--max-dets', '50'])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f'wrote {out}' in printed and 'opset 17' in printed and 'input images [2, 3, 128, 160]' in printed
    assert 'image_shapes [2, 2]' in printed
    for line in ('output dets [2, 50, 5]', 'output labels [2, 50]', 'output num_dets [2]'):
        assert line in printed
    assert printed.count(' matched (') == 2 and 'verified: ONNX Runtime matches PyTorch predict on 2' in printed
    check_file(out, 'retinanet', (128, 160), 'torchscript', batch_size=2)


def test_dynamo_on_old_torch_stops_with_the_version(monkeypatch):
    monkeypatch.setattr(deploy_export, 'torch_at_least', lambda version: False)
    expected = f'dynamo ONNX exporter needs torch >= 2.5; this is torch {torch.__version__}: use --exporter torchscript'
    with pytest.raises(ExportError, match=re.escape(expected)):
        deploy_export._check_exporter('dynamo', None)


def test_opset_floors():
    with pytest.raises(ExportError, match='opset >= 16'):
        deploy_export._check_exporter('torchscript', 15)
    if DYNAMO:
        with pytest.raises(ExportError, match='opset >= 18'):
            deploy_export._check_exporter('dynamo', 17)


def test_unsupported_model_names_the_supported_ones():
    with pytest.raises(NotImplementedError, match='No ONNX export wrapper for Linear; supported: .*MaskRCNN'):
        build_wrapper(torch.nn.Linear(1, 1), None)
