"""The torch-free ONNX runtime (mmdavit/deploy/runtime.py) and tools/deployment/onnx_infer.py.

Each step is checked against the OpenMMLab code it re-implements, run in the same test on the same data:
- preprocessing vs the config's test pipeline (mmdet / mmseg transforms, cv2 decode and resize) followed by the
  model's data preprocessor (``DetDataPreprocessor`` / ``SegDataPreProcessor``): bit-identical inputs;
- box rescaling vs mmdet's (``scale_boxes`` with reciprocal factors, and the dense heads' division);
- mask pasting vs mmdet's ``FCNMaskHead._predict_by_feat_single`` (``_do_paste_mask`` on CPU): identical binary
  masks, probabilities within 1e-6;
- segmentation post-processing vs mmseg's ``postprocess_result`` (crop, bilinear resize, argmax);
- drawing and the tool end to end on small hand-built ONNX graphs with the exporter's outputs and metadata, in a
  subprocess where torch, mmcv, mmdet, mmseg, mmengine and mmdavit cannot be imported.
"""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope
from onnx import TensorProto, helper, numpy_helper

from mmdavit.deploy import runtime
from mmdavit.deploy.export import padded_size, preprocess_metadata

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools' / 'deployment' / 'onnx_infer.py'
DET_CONFIG = REPO / 'configs' / 'detection' / 'maskrcnn_davit_t.py'
SEG_CONFIG = REPO / 'configs' / 'segmentation' / 'upernet_davit_t.py'
SEG_SYNTHETIC_CONFIG = REPO / 'configs' / 'segmentation' / 'upernet_davit_t_synthetic.py'
# (h, w): odd sizes, landscape and portrait, so that rounding and padding matter
IMAGE_SIZES = [(97, 133), (150, 63)]  # resized widths 1096.9 and 559.9: rounding half up matters
HIDDEN = ('torch', 'torchvision', 'mmcv', 'mmdet', 'mmseg', 'mmengine', 'mmpretrain', 'mmdavit')


def write_image(path: Path, size, seed: int) -> Path:
    image = np.random.RandomState(seed).randint(0, 256, size=(*size, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)
    return path


def run_pipeline(transforms_registry, pipeline, preprocessor, path: Path):
    """The config's test pipeline (annotation loading dropped: no labels here) and the data preprocessor."""
    # in the registry's own scope: a scope an earlier test left current (mmdet's) would build its transforms
    with DefaultScope.overwrite_default_scope(transforms_registry.scope):
        transforms = [transforms_registry.build(t) for t in pipeline if t['type'] != 'LoadAnnotations']
    data = dict(img_path=str(path), img_id=0)
    for transform in transforms:
        data = transform(data)
    batch = preprocessor(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), training=False)
    return batch['inputs'][0], batch['data_samples'][0]


def assert_same_input(ours: np.ndarray, image_meta, theirs: torch.Tensor, sample, pad_value: float):
    theirs = theirs.numpy()
    height, width = theirs.shape[1:]
    assert image_meta.img_shape == tuple(sample.img_shape)
    assert image_meta.ori_shape == tuple(sample.ori_shape)
    # bit-identical where the pipeline's batch has pixels (the image and its pad to the size divisor) ...
    np.testing.assert_array_equal(ours[:, :height, :width], theirs)
    # ... and the pad value beyond, up to the graph's fixed input size
    assert (ours[:, height:, :] == pad_value).all() and (ours[:, :, width:] == pad_value).all()


def export_metadata(cfg: Config, task: str, image_size) -> dict:
    """The metadata the exporter writes for ``cfg`` exported at ``image_size`` (h, w), as far as the runtime's
    preprocessing reads it."""
    return dict(task=task, image_size=list(image_size), input_size=list(padded_size(cfg, image_size)),
                preprocess=preprocess_metadata(cfg, image_size))


def set_test_resize(cfg: Config, image_size, keep_ratio: bool = True) -> None:
    """The config's test Resize at the exported size (w, h), as a user exports with --shape H W."""
    for transform in [*cfg.test_pipeline, *cfg.test_dataloader.dataset.pipeline]:
        if transform['type'] == 'Resize':
            transform.update(scale=(image_size[1], image_size[0]), keep_ratio=keep_ratio)


@pytest.mark.parametrize('size', IMAGE_SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('keep_ratio', [True, False], ids=['keep_ratio', 'stretch'])
def test_detection_preprocessing_equals_mmdet_pipeline(tmp_path, size, keep_ratio):
    import mmdet.datasets.transforms  # noqa: F401  (registers mmdet's transforms)
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    from mmdet.registry import TRANSFORMS

    cfg = Config.fromfile(str(DET_CONFIG))  # the paper config: Resize (1333, 800), keep_ratio
    # exported in the image's orientation: 800 x 1333 for a landscape image, 1333 x 800 for a portrait one
    image_size = (800, 1333) if size[1] >= size[0] else (1333, 800)
    set_test_resize(cfg, image_size, keep_ratio)
    preprocessor = DetDataPreprocessor(**{k: v for k, v in cfg.model.data_preprocessor.items() if k != 'type'})
    path = write_image(tmp_path / 'image.png', size, seed=sum(size))
    theirs, sample = run_pipeline(TRANSFORMS, cfg.test_pipeline, preprocessor, path)

    meta = export_metadata(cfg, 'detection', image_size)
    ours, image_meta = runtime.preprocess(runtime.read_image(str(path)), meta)
    assert ours.shape == (3, *padded_size(cfg, image_size))
    assert_same_input(ours, image_meta, theirs, sample, pad_value=0.0)
    assert image_meta.scale_factor == pytest.approx(sample.scale_factor, abs=0)


def test_other_orientation_is_fitted_into_the_graph():
    """A portrait image in a graph exported landscape: resized to fit (mmcv's Resize would overflow it)."""
    cfg = Config.fromfile(str(DET_CONFIG))
    meta = export_metadata(cfg, 'detection', (800, 1333))
    chw, image_meta = runtime.preprocess(np.zeros((150, 61, 3), np.uint8), meta)
    assert image_meta.img_shape == (800, 325) and chw.shape == (3, 800, 1344)


@pytest.mark.parametrize('config, size, image_size', [(SEG_CONFIG, (97, 131), (512, 2048)),
                                                      (SEG_SYNTHETIC_CONFIG, (128, 160), (128, 160))],
                         ids=['ade20k', 'synthetic_no_resize'])
def test_segmentation_preprocessing_equals_mmseg_pipeline(tmp_path, config, size, image_size):
    import mmseg.datasets.transforms  # noqa: F401
    from mmseg.models.data_preprocessor import SegDataPreProcessor
    from mmseg.registry import TRANSFORMS

    cfg = Config.fromfile(str(config))  # ADE20K: Resize (2048, 512), keep_ratio; synthetic: no resize
    preprocessor = SegDataPreProcessor(**{k: v for k, v in cfg.model.data_preprocessor.items() if k != 'type'})
    path = write_image(tmp_path / 'image.jpg', size, seed=3)  # a JPEG: decoding must match too
    theirs, sample = run_pipeline(TRANSFORMS, cfg.test_pipeline, preprocessor, path)

    meta = export_metadata(cfg, 'semantic', image_size)
    ours, image_meta = runtime.preprocess(runtime.read_image(str(path)), meta)
    assert_same_input(ours, image_meta, theirs, sample, pad_value=0.0)


def test_padding_beyond_the_divisor_is_noted_with_the_export_size():
    """An image whose own padded size is the graph's input gets no note; a wider one (60 x 160 in a 128 x 160
    graph: mmdet would pad it to 64 x 160) is told so, with the --shape that fits it."""
    cfg = Config.fromfile(str(DET_CONFIG))
    meta = export_metadata(cfg, 'detection', (120, 152))  # input 128 x 160
    assert runtime.padding_note(np.zeros((60, 76, 3), np.uint8), meta) is None  # -> 120 x 152 -> 128 x 160
    note = runtime.padding_note(np.zeros((30, 80, 3), np.uint8), meta)  # -> 57 x 152 -> 64 x 160
    assert 'fills 64x160 of the graph\'s 128x160 input' in note and '--shape 57 152' in note


def test_image_larger_than_the_graph_input_is_refused_with_the_export_size():
    meta = dict(task='semantic', input_size=[64, 64],
                preprocess=dict(resize=None, mean=[0, 0, 0], std=[1, 1, 1], pad_size_divisor=32))
    with pytest.raises(runtime.RuntimeInputError, match=r'fixed input of 64x64.*--shape 96 64'):
        runtime.preprocess(np.zeros((70, 50, 3), np.uint8), meta)


def test_box_rescale_equals_mmdet():
    from mmdet.structures.bbox import scale_boxes
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(50, 4, generator=generator) * 800
    scale_factor = (1333 / 1000, 750 / 561)  # (w, h), as mmdet's Resize stores it
    ours = runtime.rescale_boxes(boxes.numpy(), scale_factor)
    # two-stage heads: scale_boxes with the reciprocal factors; dense heads and the mask head: division
    two_stage = scale_boxes(boxes.clone(), [1 / s for s in scale_factor]).numpy()
    dense = (boxes / boxes.new_tensor(scale_factor).repeat((1, 2))).numpy()
    np.testing.assert_array_equal(ours, dense)
    np.testing.assert_allclose(ours, two_stage, rtol=1e-6)


def test_mask_pasting_equals_mmdet():
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    generator = torch.Generator().manual_seed(0)
    num_classes, ori_shape = 3, (97, 131)
    scale_factor = (1080 / 131, 800 / 97)
    img_shape = (800, 1080)
    boxes = torch.rand(12, 4, generator=generator) * torch.tensor([1080, 800, 1080, 800])
    boxes = torch.cat([boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], dim=1)
    boxes = torch.cat([boxes, torch.tensor([
        [-40.0, -30.0, 200.0, 100.0],    # partly outside the image
        [500.2, 300.7, 500.9, 301.1],    # smaller than a pixel of the original image
        [-100.0, -100.0, 1300.0, 900.0],  # larger than the image
        [10.0, 10.0, 10.001, 400.0],     # nearly zero width
    ])])
    count = len(boxes)
    probabilities = torch.rand(count, num_classes, 28, 28, generator=generator)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    with DefaultScope.overwrite_default_scope('mmdet'):  # its loss is built from mmdet's registry
        head = FCNMaskHead(num_convs=0, in_channels=8, conv_out_channels=8, num_classes=num_classes)
    img_meta = dict(scale_factor=scale_factor, ori_shape=ori_shape, img_shape=img_shape)
    theirs = head._predict_by_feat_single(probabilities, boxes.clone(), labels, img_meta,
                                          ConfigDict(mask_thr_binary=0.5), rescale=True, activate_map=True)

    selected = probabilities[torch.arange(count), labels].numpy()
    original_boxes = runtime.rescale_boxes(boxes.numpy(), scale_factor)
    meta = dict(task='instance', input_size=[800, 1088])
    ours = runtime.instance_masks(selected, original_boxes, runtime.ImageMeta(ori_shape, img_shape, scale_factor),
                                  meta)
    assert ours.dtype == bool and ours.shape == tuple(theirs.shape)
    assert theirs.any(dim=(1, 2))[:12].all()  # the random boxes are not all empty: the comparison means something
    np.testing.assert_array_equal(ours, theirs.numpy())
    # and the probabilities themselves, mask by mask as mmdet's CPU path pastes them
    for index in range(count):
        box = torch.from_numpy(original_boxes[index:index + 1])
        pasted, region = _do_paste_mask(torch.from_numpy(selected[index:index + 1, None]), box, *ori_shape,
                                        skip_empty=True)
        expected = torch.zeros(ori_shape)
        expected[region] = pasted[0]
        np.testing.assert_allclose(runtime.paste_mask(selected[index], original_boxes[index], *ori_shape),
                                   expected.numpy(), atol=1e-6, rtol=0)


def test_pasted_masks_at_input_size_are_cropped_and_resized():
    """``--paste-masks`` graphs give [K, H, W] maps in the network-input frame: crop the padding, resize."""
    generator = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 64, 96, generator=generator)
    image_meta = runtime.ImageMeta((30, 50), (48, 80), (80 / 50, 48 / 30))
    ours = runtime.instance_masks(maps.numpy(), np.zeros((3, 4), np.float32), image_meta,
                                  dict(task='instance', input_size=[64, 96]))
    expected = F.interpolate(maps[None, :, :48, :80], size=(30, 50), mode='bilinear', align_corners=False)[0] >= 0.5
    assert (torch.from_numpy(ours) == expected).float().mean() >= 0.999


@pytest.mark.parametrize('img_shape, ori_shape', [((512, 691), (97, 131)), ((40, 50), (97, 131))],
                         ids=['shrunk', 'enlarged'])
def test_semantic_postprocess_equals_mmseg(img_shape, ori_shape):
    from mmseg.models.segmentors.base import BaseSegmentor
    from mmseg.structures import SegDataSample

    generator = torch.Generator().manual_seed(0)
    input_size = (-(-img_shape[0] // 32) * 32, -(-img_shape[1] // 32) * 32)
    logits = torch.randn(1, 5, *input_size, generator=generator)
    sample = SegDataSample(metainfo=dict(img_shape=img_shape, ori_shape=ori_shape, padding_size=[
        0, input_size[1] - img_shape[1], 0, input_size[0] - img_shape[0]]))
    segmentor = SimpleNamespace(align_corners=False)  # UperNet's; the method reads nothing else for C > 1
    theirs = BaseSegmentor.postprocess_result(segmentor, logits.clone(), [sample])[0]
    image_meta = runtime.ImageMeta(ori_shape, img_shape, (img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0]))

    resized = runtime.resize_bilinear(logits[0, :, :img_shape[0], :img_shape[1]].numpy(), ori_shape)
    np.testing.assert_allclose(resized, theirs.seg_logits.data.numpy(), atol=1e-5, rtol=0)
    ours = runtime.postprocess_semantic({'seg_logits': logits.numpy()}, 0, image_meta).sem_seg
    expected = theirs.pred_sem_seg.data[0].numpy()
    top2 = np.sort(theirs.seg_logits.data.numpy(), axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-4  # where float rounding cannot swap the winner
    np.testing.assert_array_equal(ours[clear], expected[clear])
    assert (ours == expected).mean() >= 0.999


# ---------------------------------------------------------------------------------------------------------------
# Hand-built graphs with the exporter's outputs and metadata (the contract in docs/deployment.md)

CLASSES = ['circle', 'square', 'triangle']
PALETTE = [[230, 30, 30], [30, 190, 50], [40, 70, 230]]
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def save_graph(path: Path, nodes, outputs, meta: dict, input_size) -> Path:
    graph = helper.make_graph(
        nodes, 'runtime_test',
        [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, *input_size])],
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    helper.set_model_props(model, {'mmdavit': json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constant(name: str, value: np.ndarray):
    return helper.make_node('Constant', [], [name], value=numpy_helper.from_array(value, name))


def instance_graph(path: Path, input_size=(128, 160)):
    """Two detections above any threshold, one at 0.2, two padding rows; 28x28 masks, a disc in each."""
    dets = np.array([[[10, 20, 70, 90, 0.9], [80, 10, 150, 60, 0.8], [5, 5, 30, 30, 0.2],
                      [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]], np.float32)
    labels = np.array([[0, 2, 1, -1, -1]], np.int64)
    yy, xx = np.mgrid[:28, :28]
    disc = (((yy - 13.5) ** 2 + (xx - 13.5) ** 2) < 12 ** 2).astype(np.float32)
    masks = np.broadcast_to(disc, (1, 5, 28, 28)).copy()
    meta = dict(task='instance', model='MaskRCNN', config='configs/detection/maskrcnn_davit_t_synthetic.py',
                classes=CLASSES, palette=PALETTE, input_size=list(input_size),
                preprocess=dict(resize=dict(scale=[160, 128], keep_ratio=True), mean=MEAN, std=STD,
                                bgr_to_rgb=True, pad_size_divisor=32, pad_value=0.0),
                outputs=dict(dets='[B,K,5]', labels='[B,K]', num_dets='[B]', masks='[B,K,28,28]'),
                mask_size=28, exporter='test', opset=17)
    nodes = [constant('dets', dets), constant('labels', labels), constant('num_dets', np.array([3], np.int64)),
             constant('masks', masks)]
    outputs = [('dets', TensorProto.FLOAT, [1, 5, 5]), ('labels', TensorProto.INT64, [1, 5]),
               ('num_dets', TensorProto.INT64, [1]), ('masks', TensorProto.FLOAT, [1, 5, 28, 28])]
    return save_graph(path, nodes, outputs, meta, input_size), dets, labels


def semantic_graph(path: Path, input_size=(128, 160)):
    """``seg_logits`` = the normalised image itself (3 'classes': which of R, G, B is largest after mean/std)."""
    meta = dict(task='semantic', model='EncoderDecoder', classes=CLASSES, palette=PALETTE,
                input_size=list(input_size),
                preprocess=dict(resize=None, mean=MEAN, std=STD, bgr_to_rgb=True, pad_size_divisor=1, pad_value=0.0),
                outputs=dict(seg_logits='[B,C,H,W]', seg_labels='[B,H,W]'), mask_size=None, exporter='test', opset=17)
    nodes = [helper.make_node('Identity', ['images'], ['seg_logits']),
             helper.make_node('ArgMax', ['images'], ['seg_labels'], axis=1, keepdims=0)]
    outputs = [('seg_logits', TensorProto.FLOAT, [1, 3, *input_size]),
               ('seg_labels', TensorProto.INT64, [1, *input_size])]
    return save_graph(path, nodes, outputs, meta, input_size)


def test_instance_graph_end_to_end(tmp_path):
    path, dets, labels = instance_graph(tmp_path / 'instance.onnx')
    model = runtime.OnnxModel(str(path))
    image = np.full((64, 80, 3), 100, np.uint8)  # resized 2x to 128 x 160 (keep_ratio into (160, 128))
    prediction = model.predict([image], score_thr=0.3)[0]
    np.testing.assert_array_equal(prediction.labels, [0, 2])
    np.testing.assert_allclose(prediction.boxes, dets[0, :2, :4] / 2)
    assert prediction.masks.shape == (2, 64, 80)
    # each disc pasted inside its (original-frame) box, touching its middle
    for mask, (x1, y1, x2, y2) in zip(prediction.masks, prediction.boxes):
        rows, cols = np.nonzero(mask)
        assert rows.min() >= y1 - 1 and rows.max() <= y2 and cols.min() >= x1 - 1 and cols.max() <= x2
        assert mask[int((y1 + y2) / 2), int((x1 + x2) / 2)]
    # the third row scores 0.2: kept at threshold 0, never the padding rows beyond num_dets
    assert len(model.predict([image], score_thr=0.0)[0].labels) == 3

    picture = runtime.draw(image, prediction, model.meta, scale=2)
    assert picture.shape == (128, 160, 3)
    # inside the first mask: 0.8 * the class colour (BGR) + 0.2 * the grey image
    x1, y1, x2, y2 = prediction.boxes[0] * 2
    blended = picture[int((y1 + y2) / 2), int((x1 + x2) / 2)].astype(int)
    np.testing.assert_allclose(blended, 0.8 * np.array(PALETTE[0][::-1]) + 0.2 * 100, atol=2)
    # the box outline in the class colour somewhere on its left edge
    edge = picture[int(y1) + 10:int(y2) - 10, int(round(x1))].astype(int)
    assert (np.abs(edge - np.array(PALETTE[0][::-1])).max(axis=1) <= 60).any()


def test_boxes_reaching_into_the_padding_are_clipped_as_mmdet_clips_them(tmp_path):
    path, dets, _ = instance_graph(tmp_path / 'instance.onnx')
    # 64 x 60 resized 2x to 128 x 120 inside the 128 x 160 input: the second box (x2 = 150) reaches the padding
    prediction = runtime.OnnxModel(str(path)).predict([np.zeros((64, 60, 3), np.uint8)], score_thr=0.3)[0]
    np.testing.assert_allclose(prediction.boxes, [dets[0, 0, :4] / 2, [40, 5, 60, 30]])
    assert prediction.masks.shape == (2, 64, 60)


def test_semantic_graph_end_to_end(tmp_path):
    path = semantic_graph(tmp_path / 'semantic.onnx')
    model = runtime.OnnxModel(str(path))
    image = np.random.RandomState(0).randint(0, 256, size=(100, 150, 3), dtype=np.uint8)
    prediction = model.predict([image])[0]
    normalised = (image[..., ::-1].astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_array_equal(prediction.sem_seg, normalised.argmax(axis=2))
    picture = runtime.draw(image, prediction, model.meta)
    colours = np.array([c[::-1] for c in PALETTE])[prediction.sem_seg]
    # away from the class-name labels, every pixel is 0.8 x its class colour + 0.2 x the image
    close = np.abs(picture.astype(int) - (0.8 * colours + 0.2 * image)).max(axis=2) <= 1
    assert close.mean() > 0.8


def test_file_without_metadata_is_refused(tmp_path):
    path = tmp_path / 'plain.onnx'
    graph = helper.make_graph([helper.make_node('Identity', ['images'], ['out'])], 'g',
                              [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info('out', TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    with pytest.raises(runtime.RuntimeInputError, match='export_onnx.py'):
        runtime.OnnxModel(str(path))


BLOCKER = '''
import runpy, sys
HIDDEN = {hidden!r}

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in HIDDEN:
            raise ImportError(f'{{name}} is hidden in this test')

sys.meta_path.insert(0, Hide())
sys.argv = {argv!r}
try:
    runpy.run_path({tool!r}, run_name='__main__')
finally:
    print('loaded:', sorted(m for m in sys.modules if m.split('.')[0] in HIDDEN))
'''


def run_hidden(argv, cwd):
    """The tool in a fresh interpreter where torch, mmcv, mmdet, mmseg, mmengine and mmdavit cannot import."""
    script = BLOCKER.format(hidden=HIDDEN, argv=[str(TOOL), *map(str, argv)], tool=str(TOOL))
    return subprocess.run([sys.executable, '-c', script], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_blocker_hides_torch(tmp_path):
    """The hiding itself works (else the next test proves nothing)."""
    script = BLOCKER.format(hidden=HIDDEN, argv=['x'], tool=str(tmp_path / 'probe.py'))
    (tmp_path / 'probe.py').write_text('import torch\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and 'torch is hidden in this test' in result.stderr


def test_onnx_infer_draws_without_torch_mmcv_mmdet(tmp_path):
    instance, _, _ = instance_graph(tmp_path / 'instance.onnx')
    semantic = semantic_graph(tmp_path / 'semantic.onnx')
    images = tmp_path / 'images'
    images.mkdir()
    write_image(images / 'a.png', (64, 80), seed=1)
    write_image(images / 'b.jpg', (128, 160), seed=2)
    write_image(images / 'c.png', (60, 160), seed=3)  # wide: 64 x 160 after padding in a 128 x 160 graph

    result = run_hidden([images, '--model', instance, '--out-dir', tmp_path / 'det', '--score-thr', 0.5,
                         '--save-pred', '--scale', 2], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'loaded: []' in result.stdout
    assert '2 detections >= 0.5' in result.stdout
    notes = [line for line in result.stdout.splitlines() if line.startswith('note: ')]
    assert len(notes) == 1 and 'c.png: resized to 60x160' in notes[0] and '--shape 60 160' in notes[0], notes
    for name, size in (('a.png', (128, 160)), ('b.jpg', (256, 320))):
        picture = cv2.imread(str(tmp_path / 'det' / 'vis' / name))
        assert picture is not None and picture.shape[:2] == size
    saved = np.load(tmp_path / 'det' / 'preds' / 'a.npz')
    assert saved['masks'].shape == (2, 64, 80) and list(saved['labels']) == [0, 2]

    result = run_hidden([images / 'b.jpg', '--model', semantic, '--out-dir', tmp_path / 'seg'], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'loaded: []' in result.stdout
    assert cv2.imread(str(tmp_path / 'seg' / 'vis' / 'b.jpg')).shape[:2] == (128, 160)


def test_onnx_infer_names_unusable_inputs(tmp_path):
    semantic = semantic_graph(tmp_path / 'semantic.onnx')
    (tmp_path / 'broken.png').write_bytes(b'not a png')
    result = run_hidden([tmp_path / 'broken.png', '--model', semantic, '--out-dir', tmp_path / 'out'], cwd=tmp_path)
    assert result.returncode != 0
    assert 'broken.png: not an image OpenCV can decode' in result.stderr
    write_image(tmp_path / 'big.png', (200, 100), seed=0)  # the graph is fixed at 128 x 160, no resize
    result = run_hidden([tmp_path / 'big.png', '--model', semantic, '--out-dir', tmp_path / 'out'], cwd=tmp_path)
    assert result.returncode == 1
    assert 'does not fit the graph\'s fixed input of 128x160' in result.stderr and '--shape 200 100' in result.stderr
