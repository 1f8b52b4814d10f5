"""Whole-model ONNX export of UperNet, Mask2Former (ADE20K semantic and COCO instance) and DINO: narrow-DaViT
twins of the synthetic configs, trained for a few iterations, exported, run in ONNX Runtime and compared with the
PyTorch model's ``predict`` on the same preprocessed input (mmdavit.deploy.export.verify: seg logits within 1e-4
and labels >= 99.9% equal; detections matched at box IoU > 0.99 with the same label, scores within 1e-4, masks
IoU > 0.99).

Sizes: 128 x 160 (a multiple of 32) and one that is not (semantic and DINO: the input itself, every DaViT stage
padded; Mask2Former instance: a 120 x 152 image padded to the 128 x 160 input by its pad_size_divisor=32, masks
cropped to the image as mmdet does). Both exporters: the dynamo one on torch >= 2.5, the TorchScript one on
every torch.
"""
import textwrap

import pytest
import torch

from mmdavit.compat import torch_at_least
from mmdavit.deploy import export as deploy_export
from mmdavit.deploy.export import build_wrapper, export_onnx, load_inputs, load_model, read_metadata, verify
from tests.deploy.conftest import COCO_DATA, NARROW_BACKBONE, ROOT, train_briefly, verification_images

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

DYNAMO = torch_at_least(deploy_export.DYNAMO_MIN_TORCH)
requires_dynamo = pytest.mark.skipif(
    not DYNAMO, reason=f'the dynamo ONNX exporter needs torch >= {deploy_export.DYNAMO_MIN_TORCH} '
                       f'(this is torch {torch.__version__})')

# test-sized transformers (one deformable encoder layer, one decoder layer) and Mask2Former losses on 1024 points
# instead of 12544 (the suite's time)
DETECTORS = {
    'dino': dict(base='configs/detection/dino_4scale_davit_t_12e_synthetic.py', model=f'''
model = dict(
    num_queries=50,
    backbone=dict(arch={NARROW_BACKBONE}),
    neck=dict(in_channels=[64, 128, 256]),
    encoder=dict(num_layers=1),
    decoder=dict(num_layers=1),
    test_cfg=dict(max_per_img=50))
'''),
    'mask2former': dict(base='configs/detection/mask2former_davit_t_lsj_50e_coco_synthetic.py', model=f'''
model = dict(
    backbone=dict(arch={NARROW_BACKBONE}),
    panoptic_head=dict(
        in_channels=[32, 64, 128, 256], num_queries=20,
        pixel_decoder=dict(encoder=dict(num_layers=1)),
        transformer_decoder=dict(num_layers=1)),
    train_cfg=dict(num_points=1024),
    test_cfg=dict(max_per_image=20))
'''),
}

SEGMENTORS = {
    'upernet': dict(base='configs/segmentation/upernet_davit_t_synthetic.py', model=f'''
model = dict(
    backbone=dict(arch={NARROW_BACKBONE}),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=32),
    auxiliary_head=dict(in_channels=128, channels=32))
'''),
    'mask2former_ade': dict(base='configs/segmentation/mask2former_davit_t_160k_ade20k_synthetic.py', model=f'''
model = dict(
    backbone=dict(arch={NARROW_BACKBONE}),
    decode_head=dict(
        in_channels=[32, 64, 128, 256], num_queries=20,
        pixel_decoder=dict(encoder=dict(num_layers=1)),
        transformer_decoder=dict(num_layers=1),
        train_cfg=dict(num_points=1024)))
'''),
}
ITERATIONS = 4  # AdamW steps of 2 images: enough for predictions that are not the untrained heads' constants
ADE_DATA = '''
data_root = {root!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
'''


@pytest.fixture(scope='session')
def trained_any(tmp_path_factory, coco_data, ade_data):
    """``trained_any(family) -> (config, checkpoint)``: the twins above (detectors on conftest's COCO data),
    each trained once per session for ITERATIONS steps."""
    cache = {}

    def get(family: str) -> tuple:
        if family not in cache:
            folder = tmp_path_factory.mktemp(f'deploy_{family}')
            config = folder / f'{family}_narrow.py'
            spec = SEGMENTORS.get(family) or DETECTORS[family]
            data = ADE_DATA.format(root=ade_data) if family in SEGMENTORS else COCO_DATA.format(root=coco_data)
            config.write_text(textwrap.dedent(f"_base_ = {str(ROOT / spec['base'])!r}\n" + data + spec['model']))
            scope = 'mmseg' if family in SEGMENTORS else 'mmdet'
            cache[family] = (config, train_briefly(config, folder / 'model.pth', ITERATIONS, scope=scope))
        return cache[family]

    return get


# Each model at a size that is a multiple of 32 and one that is not, and with each exporter; not every
# combination (the dynamo exports take 10-30 s each here). UperNet and DINO configs do not pad these inputs (the
# graph's input is the image); Mask2Former pads 120 x 152 (instance) and 100 x 140 (ADE20K's test_cfg) to 128 x 160.
CASES = [
    ('upernet', (100, 140), 'torchscript'),  # PPM pools of 6 on a 4 x 5 map: the matrix pool
    ('upernet', (128, 160), 'torchscript'),
    ('upernet', (100, 140), 'dynamo'),
    ('mask2former_ade', (100, 140), 'torchscript'),
    ('mask2former_ade', (128, 160), 'dynamo'),
    ('mask2former', (120, 152), 'torchscript'),
    ('mask2former', (128, 160), 'dynamo'),
    ('dino', (100, 140), 'torchscript'),
    ('dino', (128, 160), 'dynamo'),
]
CASES = [
    pytest.param(family, size, exporter, id=f'{family}-{size[0]}x{size[1]}-{exporter}',
                 marks=[requires_dynamo] if exporter == 'dynamo' else [])
    for family, size, exporter in CASES
]


@pytest.mark.parametrize('family,size,exporter', CASES)
def test_onnx_runtime_matches_predict(trained_any, tmp_path, family, size, exporter):
    config, checkpoint = trained_any(family)
    model, cfg = load_model(str(config), str(checkpoint))
    wrapper = build_wrapper(model, cfg, image_size=size)
    path = tmp_path / f'{family}.onnx'
    logs = []
    meta = export_onnx(wrapper, model, cfg, str(path), image_size=size, config_path=str(config), exporter=exporter,
                       log=logs.append)
    inputs, image_shapes = load_inputs(model, cfg, verification_images(cfg, tmp_path), size)
    figures = verify(str(path), wrapper, model, inputs, image_shapes, log=logs.append)
    print('\n'.join(logs))  # export time, size and the figures, for the report (pytest -s)

    proto = onnx.load(str(path))
    assert {node.domain for node in proto.graph.node} <= {'', 'ai.onnx'}
    stored = read_metadata(str(path))
    assert stored['exporter'] == exporter and stored['image_size'] == list(size)
    assert stored['classes'] == ['circle', 'square', 'triangle', 'star']
    graph_inputs = [graph_input.name for graph_input in proto.graph.input]
    assert graph_inputs == (['images'] if wrapper.task == 'semantic' else ['images', 'image_shapes'])
    assert list(stored['inputs']) == graph_inputs
    # verify() raised on any disagreement; here the figures once more, and that there was something to compare
    if wrapper.task == 'semantic':
        input_size = [128, 160] if family == 'mask2former_ade' else list(size)
        assert stored['task'] == 'semantic' and stored['input_size'] == input_size
        assert stored['outputs']['seg_logits']['shape'] == [1, 4, *input_size]
        for f in figures:
            assert f['max_logit_diff'] <= 1e-4 and f['label_agreement'] >= 0.999, f
    else:
        assert all(f['reference'] > 0 and f['matched'] > 0 for f in figures), figures
        for f in figures:
            assert f['min_box_iou'] > 0.99 and f['max_score_diff'] <= 1e-4 and f['unmatched_not_borderline'] == 0, f
        ops = {node.op_type for node in proto.graph.node}
        assert 'GridSample' in ops  # deformable attention through the standard op
        if family == 'mask2former':
            assert stored['task'] == 'instance' and stored['input_size'] == [128, 160]
            assert stored['outputs']['masks']['shape'][-2:] == list(size)
            assert all(f['min_mask_iou'] > 0.99 for f in figures), figures
    assert meta['seconds'] > 0 and meta['bytes'] == path.stat().st_size


def test_mask2former_masks_reaching_into_the_padding_are_cropped(trained_any, tmp_path):
    """The briefly trained Mask2Former predicts negative mask logits in the padding, where cropping is moot. Here
    a hook raises every mask logit by 4 (in the graph and in ``predict`` alike), so masks reach into the padding
    right of the portrait image: mmdet crops them to its ``img_shape`` before scoring and boxing them, and so must
    the graph."""
    config, checkpoint = trained_any('mask2former')
    model, cfg = load_model(str(config), str(checkpoint))
    model.panoptic_head.register_forward_hook(lambda module, args, out: (out[0], [m + 4.0 for m in out[1]]))
    size = (120, 152)
    wrapper = build_wrapper(model, cfg, image_size=size)
    path = tmp_path / 'mask2former.onnx'
    export_onnx(wrapper, model, cfg, str(path), image_size=size, exporter='torchscript', log=lambda line: None)
    inputs, image_shapes = load_inputs(model, cfg, verification_images(cfg, tmp_path)[-1:], size)
    assert image_shapes.tolist() == [[120, 75]]
    figures = verify(str(path), wrapper, model, inputs, image_shapes, log=lambda line: None)
    assert figures[0]['matched'] > 0 and figures[0]['min_mask_iou'] > 0.99, figures


def test_label_ties_count_as_agreement_and_nothing_else():
    """Two classes, three pixels: a tie (both logits 0), a clear 1 > 0 and a clear 0.5 > 0.2. ONNX labels
    (1, 0, 1): the tie is agreement, the third pixel is not."""
    from types import SimpleNamespace

    reference_logits = torch.tensor([[[0.0, 1.0, 0.5]], [[0.0, 0.0, 0.2]]])
    reference = SimpleNamespace(seg_logits=SimpleNamespace(data=reference_logits),
                                pred_sem_seg=SimpleNamespace(data=reference_logits.argmax(0, keepdim=True)))
    ours = dict(seg_logits=reference_logits.numpy(), seg_labels=torch.tensor([[1, 0, 1]]).numpy())
    figures = deploy_export._compare_semantic(ours, reference)
    assert figures['labels_equal'] == pytest.approx(1 / 3) and figures['label_agreement'] == pytest.approx(2 / 3)


@pytest.mark.parametrize('in_size,out_size', [(16, 6), (16, 3), (4, 6), (5, 3), (7, 2), (1, 1), (13, 13)])
def test_pool_matrix_is_adaptive_avg_pool(in_size, out_size):
    from mmdavit.deploy.segmentation import MatrixAdaptiveAvgPool2d
    x = torch.randn(2, 3, in_size, in_size + 3)
    for output_size in (out_size, (out_size, None), (out_size, out_size + 1)):
        expected = torch.nn.AdaptiveAvgPool2d(output_size)(x)
        actual = MatrixAdaptiveAvgPool2d(output_size)(x)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_export_patches_are_undone(trained_any):
    """The wrappers swap the adaptive pools and the deformable attention only while they run: afterwards the
    models' modules and methods are the classes' own again."""
    from mmdavit.deploy.query_based import static_deformable_attention
    from mmdavit.deploy.segmentation import exact_adaptive_pooling
    pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(6))
    with exact_adaptive_pooling(pool):
        assert type(pool[0]).__name__ == 'MatrixAdaptiveAvgPool2d'
    assert type(pool[0]) is torch.nn.AdaptiveAvgPool2d

    model, _ = load_model(*(str(p) for p in trained_any('dino')))
    with static_deformable_attention(model, [(16, 20), (8, 10), (4, 5), (2, 3)]):
        assert 'forward' in vars(model.encoder.layers[0].self_attn)
        assert 'gen_encoder_output_proposals' in vars(model)
    assert not any('forward' in vars(m) for m in model.modules())
    assert 'gen_encoder_output_proposals' not in vars(model)
    assert 'get_encoder_reference_points' not in vars(model.encoder)
