"""Export a whole mmdet / mmseg model to ONNX and check the file in ONNX Runtime against the model's ``predict``.

Wrappers are registered by the model's class name::

    @register_wrapper('RetinaNet')
    def build_retinanet(model, cfg, *, score_thr, max_dets, paste_masks, image_size) -> torch.nn.Module: ...

Each wrapper's ``forward(images[, image_shapes])`` takes ``float32 [B, 3, H, W]`` already preprocessed (resized,
normalised, padded as the config's test pipeline and data preprocessor do) and returns a tuple of tensors named
by its ``output_names``; its ``input_names`` are ``['images']`` or, for detectors, ``['images', 'image_shapes']``
(``int64 [B, 2]``, each resized image's (h, w) inside the padded input: mmdet's ``img_shape``, to which it clips
boxes and DETR-like models mask their attention). Its ``task`` is ``'detection'``, ``'instance'`` or
``'semantic'``. ``score_thr`` and ``max_dets`` are None for the config's values; ``image_size`` (h, w) is the
exported image size inside the padded input (the default image shape; masks are pasted at it), None for the
whole input.

Sizes: ``image_size`` is what ``--shape H W`` gives, the network-input image before padding; the graph's input
is that padded up to the data preprocessor's size divisor (mmdet's ``pad_size_divisor``, mmseg's
``size_divisor``), e.g. 120 x 152 -> 128 x 160 with a divisor of 32, with ``pad_value`` in normalised space.
"""
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmdavit.compat import torch_at_least

WrapperBuilder = Callable[..., torch.nn.Module]
WRAPPERS: Dict[str, WrapperBuilder] = {}

# modules that register wrappers when imported (so ``build_wrapper`` finds them without the caller importing)
_WRAPPER_MODULES = ('mmdavit.deploy.detection', 'mmdavit.deploy.segmentation', 'mmdavit.deploy.query_based')

DYNAMO_MIN_TORCH = '2.5'
DYNAMO_MIN_OPSET = 18  # the dynamo exporter builds opset 18 graphs; down-conversion of ours fails
TORCHSCRIPT_MIN_OPSET = 16  # RoiAlign half_pixel (aligned=True) and GridSample
DEFAULT_OPSET = {'dynamo': 18, 'torchscript': 17}
METADATA_KEY = 'mmdavit'

# verification tolerances (the issue's acceptance figures)
BOX_IOU = 0.99
SCORE_ATOL = 1e-4
MASK_IOU = 0.99
LOGIT_ATOL = 1e-4
LABEL_AGREEMENT = 0.999


def image_shapes_or_default(images: torch.Tensor, image_shapes: Optional[torch.Tensor],
                            image_size: Optional[Tuple[int, int]]) -> torch.Tensor:
    """``image_shapes`` [B, 2] (h, w) as given, else ``image_size`` (None: the whole input) for every image."""
    if image_shapes is not None:
        return image_shapes
    size = image_size or tuple(images.shape[-2:])
    return torch.tensor([[int(size[0]), int(size[1])]], device=images.device).expand(images.shape[0], 2)


def register_wrapper(*class_names: str):
    """Decorator: ``builder(model, cfg, *, score_thr, max_dets, paste_masks, image_size)`` serves these model
    classes."""

    def decorate(builder: WrapperBuilder) -> WrapperBuilder:
        for name in class_names:
            WRAPPERS[name] = builder
        return builder

    return decorate


def _import_wrapper_modules():
    import importlib
    for module in _WRAPPER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # the module exists but something it needs is missing: say so
                raise


def build_wrapper(model: torch.nn.Module, cfg, *, score_thr: Optional[float] = None,
                  max_dets: Optional[int] = None, paste_masks: bool = False,
                  image_size: Optional[Tuple[int, int]] = None) -> torch.nn.Module:
    """The export wrapper for ``model`` (an mmdet detector or mmseg segmentor in eval mode), by its class.

    Detection wrappers write ``score_thr`` / ``max_dets`` (when given) into the model's own test_cfg, so that
    ``model.predict`` -- the reference :func:`verify` compares with -- applies the same ones."""
    _import_wrapper_modules()
    name = type(model).__name__
    if name not in WRAPPERS:
        raise NotImplementedError(
            f'No ONNX export wrapper for {name}; supported: {", ".join(sorted(WRAPPERS)) or "none"}')
    wrapper = WRAPPERS[name](model, cfg, score_thr=score_thr, max_dets=max_dets, paste_masks=paste_masks,
                             image_size=image_size)
    return wrapper.eval()


# -- model, sizes, metadata --------------------------------------------------------------------------------------
def load_model(config, checkpoint: str, cfg_options: Optional[dict] = None):
    """(model in eval mode on the CPU, config) through mmdet's ``init_detector`` or mmseg's ``init_model``."""
    from mmengine.config import Config
    cfg = Config.fromfile(config) if isinstance(config, (str, Path)) else config
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'init_cfg' in cfg.model.get('backbone', {}):
        cfg.model.backbone.init_cfg = None  # the checkpoint holds every weight: no pretrained download
    scope = cfg.get('default_scope', 'mmdet')
    if scope == 'mmseg':
        from mmseg.apis import init_model
        model = init_model(cfg, checkpoint, device='cpu')
    elif scope == 'mmdet':
        from mmdet.apis import init_detector
        model = init_detector(cfg, checkpoint, device='cpu')
    else:
        raise NotImplementedError(f'ONNX export serves mmdet and mmseg configs; this one has default_scope={scope!r}')
    return model.eval(), cfg


def size_divisor(cfg) -> int:
    """mmdet's ``pad_size_divisor``; mmseg's ``size_divisor``, or its ``test_cfg.size_divisor`` (Mask2Former on
    ADE20K pads only its test inputs)."""
    preprocessor = cfg.model.get('data_preprocessor') or {}
    test_cfg = preprocessor.get('test_cfg') or {}
    return int(preprocessor.get('pad_size_divisor') or preprocessor.get('size_divisor')
               or test_cfg.get('size_divisor') or 1)


def padded_size(cfg, image_size: Sequence[int]) -> Tuple[int, int]:
    """The graph's input size: ``image_size`` (h, w) padded up to the data preprocessor's size divisor."""
    divisor = size_divisor(cfg)
    return tuple(int(-(-side // divisor) * divisor) for side in image_size)


def _test_resize(cfg) -> dict:
    pipeline = cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline') or cfg.get('test_pipeline') or []
    for step in pipeline:
        if step.get('type', '').split('.')[-1] in ('Resize', 'RandomResize', 'FixScaleResize'):
            return step
    return {}


def preprocess_metadata(cfg, image_size: Sequence[int]) -> dict:
    """What the runtime does before the graph: resize the image to fit ``image_size`` (h, w) -- keeping its
    aspect ratio if the config's test resize does (scale factor min(h / h0, w / w0), mmcv's rounding
    ``int(x * factor + 0.5)``, bilinear) --, convert BGR to RGB if asked, normalise, pad right / bottom to the
    graph's input size with ``pad_value``."""
    preprocessor = cfg.model.get('data_preprocessor') or {}
    resize = _test_resize(cfg)
    pad_value = preprocessor.get('pad_value', preprocessor.get('pad_val', 0))
    return {
        'resize': {'scale': [int(image_size[1]), int(image_size[0])],
                   'keep_ratio': bool(resize.get('keep_ratio', True))},
        'mean': [float(v) for v in preprocessor.get('mean', [0.0, 0.0, 0.0])],
        'std': [float(v) for v in preprocessor.get('std', [1.0, 1.0, 1.0])],
        'bgr_to_rgb': bool(preprocessor.get('bgr_to_rgb', preprocessor.get('rgb_to_bgr', False))),
        'pad_size_divisor': size_divisor(cfg),
        'pad_value': float(pad_value),
    }


def dataset_meta(model, cfg) -> dict:
    meta = dict(getattr(model, 'dataset_meta', None) or {})
    if not meta.get('classes'):
        meta.update(cfg.get('test_dataloader', {}).get('dataset', {}).get('metainfo') or {})
    classes = [str(c) for c in meta.get('classes', [])]
    palette = [[int(v) for v in colour] for colour in meta.get('palette', [])]
    return {'classes': classes, 'palette': palette}


INPUT_MEANINGS = {
    'images': 'float32 [B, 3, H, W]: resized, normalised images padded right and bottom with pad_value',
    'image_shapes': 'int64 [B, 2]: h, w of each resized image inside the padded input (boxes are clipped to it)',
}

OUTPUT_MEANINGS = {
    'dets': 'float32 [B, K, 5]: x1, y1, x2, y2 in the network-input frame (resized image, before padding), score; '
            'valid rows first by descending score, padding rows have score 0',
    'labels': 'int64 [B, K]: class index into "classes", -1 on padding rows',
    'num_dets': 'int64 [B]: number of valid rows',
    'masks': 'float32 [B, K, h, w]: mask probabilities of the row\'s class; h, w = mask_size (inside the box, '
             'to be pasted) or the image size (pasted); threshold 0.5',
    'seg_logits': 'float32 [B, C, H, W]: class scores at the input size',
    'seg_labels': 'int64 [B, H, W]: argmax class at the input size',
}


def metadata(wrapper, model, cfg, *, config_path: str, image_size, input_size, exporter: str, opset: int,
             output_shapes: Dict[str, Sequence[int]]) -> dict:
    masks = output_shapes.get('masks')
    mask_size = None
    if wrapper.task == 'instance' and masks is not None and tuple(masks[-2:]) != tuple(image_size):
        mask_size = int(masks[-1])
    return {
        'task': wrapper.task,
        'model': type(model).__name__,
        'config': str(config_path),
        **dataset_meta(model, cfg),
        'input_size': [int(v) for v in input_size],
        'image_size': [int(v) for v in image_size],
        'preprocess': preprocess_metadata(cfg, image_size),
        'inputs': {name: INPUT_MEANINGS[name] for name in input_names(wrapper)},
        'outputs': {name: {'shape': [int(v) for v in output_shapes[name]], 'meaning': OUTPUT_MEANINGS.get(name, '')}
                    for name in wrapper.output_names},
        'mask_size': mask_size,
        'exporter': exporter,
        'opset': int(opset),
    }


# -- export ------------------------------------------------------------------------------------------------------
class ExportError(RuntimeError):
    pass


def _check_exporter(exporter: str, opset: Optional[int]) -> int:
    if exporter not in DEFAULT_OPSET:
        raise ExportError(f'unknown exporter {exporter!r}: use dynamo or torchscript')
    opset = DEFAULT_OPSET[exporter] if opset is None else int(opset)
    if exporter == 'dynamo':
        if not torch_at_least(DYNAMO_MIN_TORCH):
            raise ExportError(f'the dynamo ONNX exporter needs torch >= {DYNAMO_MIN_TORCH}; this is torch '
                              f'{torch.__version__}: use --exporter torchscript')
        try:
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise ExportError('the dynamo ONNX exporter needs onnxscript: pip install -e ".[deploy]" '
                              '(or --exporter torchscript)') from error
        if opset < DYNAMO_MIN_OPSET:
            raise ExportError(f'the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET} (got --opset {opset}); '
                              'for an older opset use --exporter torchscript')
    elif opset < TORCHSCRIPT_MIN_OPSET:
        raise ExportError(f'--opset {opset}: the graph needs opset >= {TORCHSCRIPT_MIN_OPSET} '
                          '(RoiAlign with half_pixel coordinates, GridSample)')
    return opset


def input_names(wrapper) -> List[str]:
    return list(getattr(wrapper, 'input_names', ['images']))


def example_inputs(wrapper, batch_size: int, input_size: Sequence[int], image_size: Sequence[int]) -> tuple:
    """Zeros for ``images`` and the exported ``image_size`` for every image's ``image_shapes``."""
    images = torch.zeros(batch_size, 3, *input_size)
    if 'image_shapes' not in input_names(wrapper):
        return (images, )
    return images, image_shapes_or_default(images, None, image_size).contiguous()


def _torch_onnx_export(wrapper, example: tuple, path: Path, exporter: str, opset: int) -> None:
    import inspect
    import warnings
    kwargs = dict(input_names=input_names(wrapper), output_names=list(wrapper.output_names), opset_version=opset)
    has_dynamo_flag = 'dynamo' in inspect.signature(torch.onnx.export).parameters
    if exporter == 'dynamo':
        kwargs.update(dynamo=True, external_data=False, verbose=False)
        if 'report' in inspect.signature(torch.onnx.export).parameters:
            kwargs['report'] = False
    elif has_dynamo_flag:
        kwargs['dynamo'] = False
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings (size-specialised Python branches: the graph is made for this input size) and the
        # TorchScript exporter's deprecation notice
        warnings.simplefilter('ignore')
        torch.onnx.export(wrapper, example, str(path), **kwargs)


def export_onnx(wrapper, model, cfg, out: str, *, image_size: Sequence[int], config_path: str = '',
                exporter: str = 'dynamo', opset: Optional[int] = None, batch_size: int = 1,
                log: Callable[[str], None] = print) -> dict:
    """Export ``wrapper`` at ``image_size`` (h, w; the graph's input is padded to the size divisor), store the
    metadata, check the file with ``onnx.checker``. Returns the metadata plus ``seconds`` and ``bytes``."""
    import onnx
    opset = _check_exporter(exporter, opset)
    input_size = padded_size(cfg, image_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = example_inputs(wrapper, batch_size, input_size, image_size)
    with torch.no_grad():
        output_shapes = dict(zip(wrapper.output_names, (tuple(t.shape) for t in wrapper(*example))))
    start = time.perf_counter()
    _torch_onnx_export(wrapper, example, out, exporter, opset)
    seconds = time.perf_counter() - start
    proto = onnx.load(str(out))
    written_opset = max(op.version for op in proto.opset_import if op.domain in ('', 'ai.onnx'))
    meta = metadata(wrapper, model, cfg, config_path=config_path, image_size=image_size, input_size=input_size,
                    exporter=exporter, opset=written_opset, output_shapes=output_shapes)
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.checker.check_model(proto, full_check=True)
    custom = sorted({node.domain for node in proto.graph.node if node.domain not in ('', 'ai.onnx')})
    if custom:
        raise ExportError(f'the graph uses custom op domains {custom}: only standard ONNX ops are allowed')
    onnx.save(proto, str(out))
    size = out.stat().st_size
    log(f'wrote {out} ({size / 2**20:.1f} MiB) in {seconds:.1f} s: {meta["model"]}, {exporter} exporter, '
        f'opset {written_opset}, input images [{batch_size}, 3, {input_size[0]}, {input_size[1]}] '
        f'(image {image_size[0]} x {image_size[1]} padded to a multiple of {size_divisor(cfg)})'
        + (f', image_shapes [{batch_size}, 2]' if 'image_shapes' in input_names(wrapper) else ''))
    for name in wrapper.output_names:
        log(f'  output {name} {list(output_shapes[name])}: {OUTPUT_MEANINGS.get(name, "")}')
    return dict(meta, seconds=seconds, bytes=size)


def read_metadata(path: str) -> dict:
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise KeyError(f'{path} has no "{METADATA_KEY}" metadata: not written by tools/deployment/export_onnx.py')


# -- inputs ------------------------------------------------------------------------------------------------------
def val_images(cfg, limit: int = 2) -> List[str]:
    """The first ``limit`` images of the config's validation set (their paths)."""
    dataset_cfg = cfg.val_dataloader.dataset
    while 'dataset' in dataset_cfg and 'data_root' not in dataset_cfg:  # wrappers such as RepeatDataset
        dataset_cfg = dataset_cfg.dataset
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(dict(dataset_cfg, pipeline=[], lazy_init=False))
    paths = []
    for index in range(min(limit, len(dataset))):
        info = dataset.get_data_info(index)
        paths.append(info.get('img_path'))
    if not paths:
        raise FileNotFoundError('the config\'s validation set is empty: give --images')
    return paths


def load_inputs(model, cfg, image_paths: Sequence[str],
                image_size: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """[N, 3, H, W] inputs as the runtime makes them (see :func:`preprocess_metadata`), normalised by the
    model's own data preprocessor, and [N, 2] the (h, w) of each resized image inside them."""
    import mmcv
    height, width = image_size
    keep_ratio = preprocess_metadata(cfg, image_size)['resize']['keep_ratio']
    input_size = padded_size(cfg, image_size)
    batch, shapes = [], []
    for path in image_paths:
        image = mmcv.imread(str(path))  # BGR, as LoadImageFromFile
        if image is None:
            raise FileNotFoundError(f'cannot read image {path}')
        h0, w0 = image.shape[:2]
        if keep_ratio:
            factor = min(height / h0, width / w0)
            size = (int(w0 * factor + 0.5), int(h0 * factor + 0.5))
        else:
            size = (width, height)
        image = mmcv.imresize(image, size, interpolation='bilinear')
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        data = {'inputs': [tensor]}
        if type(model).__module__.startswith('mmseg'):  # its test-time padding records itself in the samples
            from mmseg.structures import SegDataSample
            data['data_samples'] = [SegDataSample()]
        processed = model.data_preprocessor(data, False)['inputs'][0]  # normalise, pad
        padded = processed.new_full((3, *input_size), preprocess_metadata(cfg, image_size)['pad_value'])
        padded[:, :processed.shape[1], :processed.shape[2]] = processed[:, :input_size[0], :input_size[1]]
        batch.append(padded)
        shapes.append(image.shape[:2])
    return torch.stack(batch), torch.tensor(shapes, dtype=torch.int64)


# -- verification ------------------------------------------------------------------------------------------------
class VerificationError(AssertionError):
    pass


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    # identical degenerate boxes count as the same box
    same = np.all(np.abs(a[:, None, :4] - b[None, :, :4]) <= 1e-4, axis=-1)
    return np.where(union > 0, inter / np.maximum(union, 1e-12), same.astype(np.float64))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _reference_samples(model, inputs: torch.Tensor, image_shapes: torch.Tensor):
    """Data samples telling ``predict`` that image i is ``image_shapes[i]`` (h, w) inside the padded input, not
    scaled: its results come back in the network-input frame, as the graph's. (mmseg's: the whole input, whose
    logits the graph returns.)"""
    size = tuple(inputs.shape[-2:])
    if type(model).__module__.startswith('mmseg'):
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size, batch_input_shape=size,
                                            scale_factor=(1.0, 1.0))) for _ in range(inputs.shape[0])]
    from mmdet.structures import DetDataSample
    samples = []
    for h, w in image_shapes.tolist():
        samples.append(DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0),
                                                   batch_input_shape=size, pad_shape=size)))
    return samples


def _compare_detections(onnx_out: dict, reference, image_shape, score_thr: float, mask_thr: float,
                        full_masks: bool) -> dict:
    """Match each reference detection to an ONNX one of the same label (greedy by score, best IoU)."""
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    n = int(onnx_out['num_dets'])
    dets, labels = onnx_out['dets'][:n], onnx_out['labels'][:n]
    ref = reference.pred_instances
    ref_boxes = ref.bboxes.numpy().astype(np.float64)
    ref_scores, ref_labels = ref.scores.numpy(), ref.labels.numpy()
    ious = np.zeros((len(ref_boxes), n))
    if len(ref_boxes) and n:
        ious = _box_iou(ref_boxes, dets[:, :4].astype(np.float64))
    used = np.zeros(n, dtype=bool)
    pairs, unmatched_ref = [], []
    for i in np.argsort(-ref_scores, kind='stable'):
        candidates = np.where((labels == ref_labels[i]) & ~used)[0]
        if len(candidates):
            j = candidates[np.argmax(ious[i, candidates])]
            if ious[i, j] > BOX_IOU:
                used[j] = True
                pairs.append((i, j))
                continue
        unmatched_ref.append(i)
    unmatched_onnx = list(np.where(~used)[0])
    # a detection may exist on one side only when its score sits at a cut: the score threshold, or the
    # lowest score of a full list (K rows; ties and 1e-6 differences decide there)
    k = onnx_out['dets'].shape[0]
    full_lists = [side for side, full in ((dets[:, 4], n == k), (ref_scores, len(ref_scores) >= k)) if full]
    k_cut = max((float(side.min()) for side in full_lists if len(side)), default=None)

    def at_a_cut(score: float) -> bool:
        return abs(score - score_thr) <= SCORE_ATOL or (k_cut is not None and score <= k_cut + SCORE_ATOL)

    borderline = [float(s) for s in [ref_scores[i] for i in unmatched_ref] + [dets[j, 4] for j in unmatched_onnx]]
    bad = [s for s in borderline if not at_a_cut(s)]
    figures = dict(reference=len(ref_scores), onnx=n, matched=len(pairs),
                   unmatched=len(borderline), unmatched_not_borderline=len(bad),
                   min_box_iou=float(min((ious[i, j] for i, j in pairs), default=1.0)),
                   max_score_diff=float(max((abs(ref_scores[i] - dets[j, 4]) for i, j in pairs), default=0.0)))
    if 'masks' in onnx_out and pairs:
        ref_masks = ref.masks.numpy().astype(bool)
        masks = onnx_out['masks'][:n]
        height, width = (int(v) for v in image_shape)
        if not full_masks:  # 28 x 28 inside the box: paste as mmdet does
            pasted, _ = _do_paste_mask(torch.from_numpy(masks[:, None]), torch.from_numpy(dets[:, :4]),
                                       height, width, skip_empty=False)
            masks = pasted.numpy()
        masks = masks[:, :height, :width]  # maps at the exported image size: this image's part
        figures['min_mask_iou'] = min(_mask_iou(ref_masks[i], masks[j] >= mask_thr) for i, j in pairs)
    return figures


def _compare_semantic(onnx_out: dict, reference) -> dict:
    ref_logits = reference.seg_logits.data.numpy()
    ref_labels = reference.pred_sem_seg.data.numpy()[0]
    logits = onnx_out['seg_logits']
    labels = onnx_out.get('seg_labels', logits.argmax(0))
    if logits.shape != ref_logits.shape:
        raise VerificationError(f'seg_logits shape {logits.shape} != PyTorch {ref_logits.shape}')
    equal = labels == ref_labels
    tied = np.zeros_like(equal)
    if ref_logits.shape[0] > 1:
        # a pixel whose two labels' reference logits are within the logit tolerance is a tie (e.g. where every
        # mask's sigmoid is ~0, every class scores ~0): either label is right there
        chosen = np.take_along_axis(ref_logits, labels[None].astype(np.int64), axis=0)[0]
        best = np.take_along_axis(ref_logits, ref_labels[None].astype(np.int64), axis=0)[0]
        tied = best - chosen <= LOGIT_ATOL
    return dict(max_logit_diff=float(np.abs(logits - ref_logits).max()), labels_equal=float(equal.mean()),
                label_agreement=float((equal | tied).mean()))


def verify(onnx_path: str, wrapper, model, inputs: torch.Tensor, image_shapes: torch.Tensor,
           log: Callable[[str], None] = print) -> List[dict]:
    """Run the file in ONNX Runtime and ``model.predict`` on the same preprocessed ``inputs`` (image i being
    ``image_shapes[i]`` (h, w) inside, as :func:`load_inputs` gives them); print the figures per image and raise
    :class:`VerificationError` beyond the tolerances (detections: same label, box IoU > 0.99, scores within 1e-4,
    masks IoU > 0.99, no detection on one side only unless its score sits at the threshold or the cut to K;
    semantic: logits within 1e-4, labels >= 99.9% equal)."""
    from mmdavit.deploy.runtime import OnnxModel
    onnx_model = OnnxModel(str(onnx_path))  # the runtime's own batching and image_shapes feeding
    full_masks = onnx_model.meta.get('mask_size') is None  # masks as maps of the image, not per box
    step = onnx_model.batch_size or inputs.shape[0]
    results, failures = [], []
    for start in range(0, inputs.shape[0], step):
        chunk, shapes = inputs[start:start + step], image_shapes[start:start + step]
        outputs = onnx_model.run(chunk.numpy(), shapes.numpy())
        with torch.no_grad():
            references = model.predict(chunk, _reference_samples(model, chunk, shapes))
        for k in range(chunk.shape[0]):
            one = {name: value[k] for name, value in outputs.items()}
            if wrapper.task == 'semantic':
                figures = _compare_semantic(one, references[k])
                problems = [f'max |logit diff| {figures["max_logit_diff"]:.2e} > {LOGIT_ATOL}'] \
                    if figures['max_logit_diff'] > LOGIT_ATOL else []
                if figures['label_agreement'] < LABEL_AGREEMENT:
                    problems.append(f'labels agree (or tie within {LOGIT_ATOL}) on {figures["label_agreement"]:.4%} '
                                    f'< {LABEL_AGREEMENT:.1%}')
                log(f'  image {start + k}: max |seg_logits - PyTorch| {figures["max_logit_diff"]:.2e}, '
                    f'labels equal on {figures["labels_equal"]:.4%} ({figures["label_agreement"]:.4%} counting '
                    f'ties within {LOGIT_ATOL})')
            else:
                test_cfg = _final_test_cfg(model)
                figures = _compare_detections(one, references[k], shapes[k].tolist(),
                                              float(test_cfg.get('score_thr', 0)),
                                              float(test_cfg.get('mask_thr_binary', 0.5)), full_masks)
                problems = []
                if figures['unmatched_not_borderline']:
                    problems.append(f'{figures["unmatched_not_borderline"]} detections without a counterpart '
                                    f'(same label, box IoU > {BOX_IOU})')
                if figures['max_score_diff'] > SCORE_ATOL:
                    problems.append(f'max |score diff| {figures["max_score_diff"]:.2e} > {SCORE_ATOL}')
                if figures.get('min_mask_iou', 1.0) <= MASK_IOU:
                    problems.append(f'min mask IoU {figures["min_mask_iou"]:.4f} <= {MASK_IOU}')
                mask_text = f', min mask IoU {figures["min_mask_iou"]:.4f}' if 'min_mask_iou' in figures else ''
                log(f'  image {start + k}: {figures["onnx"]} detections in ONNX Runtime, {figures["reference"]} in '
                    f'PyTorch, {figures["matched"]} matched (min box IoU {figures["min_box_iou"]:.5f}, max |score '
                    f'diff| {figures["max_score_diff"]:.1e}{mask_text}), {figures["unmatched"]} at a score cut')
            results.append(figures)
            failures += [f'image {start + k}: {problem}' for problem in problems]
    if failures:
        raise VerificationError('ONNX Runtime disagrees with the PyTorch model:\n  ' + '\n  '.join(failures))
    log(f'verified: ONNX Runtime matches PyTorch predict on {inputs.shape[0]} image(s)')
    return results


def _final_test_cfg(model) -> dict:
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is not None and getattr(roi_head, 'test_cfg', None) is not None:
        return roi_head.test_cfg
    head = getattr(model, 'bbox_head', None)
    return (getattr(head, 'test_cfg', None) or getattr(model, 'test_cfg', None) or {})
