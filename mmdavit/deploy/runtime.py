"""Run an exported mmdavit model with ONNX Runtime: no torch, mmcv, mmdet or mmseg needed.

This module imports only the standard library, numpy, OpenCV (``cv2``, the image library mmcv itself decodes and
resizes with) and onnxruntime, so that it also runs where the training stack is not installed. Importing it as
``mmdavit.deploy.runtime`` runs ``mmdavit/__init__.py``, which needs torch; where torch is absent, load this file
by path, as ``tools/deployment/onnx_infer.py`` does (``load_runtime()`` there).

Everything the steps need is read from the ONNX file itself: the exporter (``tools/deployment/export_onnx.py``)
stores a JSON string under the metadata key ``mmdavit`` (docs/deployment.md lists its fields). The steps are the
config's own, written again in numpy:

1. ``preprocess``: decode as mmcv does (BGR), resize as mmcv's ``Resize`` to the exported image size
   (``keep_ratio``: one factor so that the image fits, sizes rounded half up, OpenCV bilinear), BGR -> RGB,
   ``(x - mean) / std`` in float32, then pad right and bottom with ``pad_value`` up to the graph's fixed input
   size (the exported size padded to the size divisor).
2. ONNX Runtime, given each resized image's (h, w) as ``image_shapes`` where the graph takes it (detectors: the
   graph clips boxes to it and DETR-like models mask the padding, as mmdet does with ``img_shape``).
3. ``postprocess``: boxes clipped to the resized image and divided by the resize factors (as mmdet rescales),
   28x28 mask probabilities pasted into the original image as mmdet's ``_do_paste_mask`` does on CPU (bilinear,
   pixel centres, zero outside the mask), thresholded at ``mask_thr_binary``; segmentation logits cropped to the
   resized image, resized bilinearly to the original size (mmseg's ``postprocess_result``) and arg-maxed.
4. ``draw``: boxes, ``class: score`` labels and masks as mmdet's ``DetLocalVisualizer``, the class map blended
   over the image with class names as mmseg's ``SegLocalVisualizer``.

Example::

    model = OnnxModel('maskrcnn.onnx')
    image = read_image('demo.png')
    prediction = model.predict([image], score_thr=0.3)[0]
    cv2.imwrite('out.png', draw(image, prediction, model.meta))
"""
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime as ort

METADATA_KEY = 'mmdavit'
TASKS = ('detection', 'instance', 'semantic')


class RuntimeInputError(ValueError):
    """An image or ONNX file the runtime cannot use; the message says why and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Metadata


def read_metadata(session: 'ort.InferenceSession', path: str = 'the ONNX file') -> dict:
    """The exporter's metadata dict, checked for the fields the runtime uses."""
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise RuntimeInputError(f'{path} has no {METADATA_KEY!r} metadata: it was not written by mmdavit\'s '
                                f'tools/deployment/export_onnx.py (export it with that script)')
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise RuntimeInputError(f'{path}: the {METADATA_KEY!r} metadata is not valid JSON ({error}); '
                                f're-export the model') from None
    missing = [key for key in ('task', 'input_size', 'preprocess') if key not in meta]
    if missing:
        raise RuntimeInputError(f'{path}: the {METADATA_KEY!r} metadata lacks {", ".join(missing)}; re-export the '
                                f'model with this version of mmdavit')
    if meta['task'] not in TASKS:
        raise RuntimeInputError(f'{path}: task {meta["task"]!r} is not one the runtime handles ({", ".join(TASKS)})')
    return meta


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing


def read_image(path: str) -> np.ndarray:
    """A colour image as mmcv's ``LoadImageFromFile`` reads it: uint8 BGR, EXIF orientation applied."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise RuntimeInputError(f'{path}: cannot read ({error})') from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise RuntimeInputError(f'{path}: not an image OpenCV can decode (corrupt, or another kind of file)')
    return image


def fit_size(width: int, height: int, scale: Sequence[int]) -> Tuple[int, int]:
    """(new_w, new_h) of an image resized with its aspect ratio kept to fit in ``scale`` (w, h): factor
    min(h / h0, w / w0), sizes rounded half up as mmcv's ``rescale_size`` does. When the image has the scale's
    orientation (both landscape or both portrait) this is exactly mmcv's keep-ratio factor
    min(long / long0, short / short0), so the image comes out as the config's ``Resize(scale, keep_ratio=True)``
    makes it; an image of the other orientation is made to fit the graph instead of overflowing it."""
    factor = min(scale[1] / height, scale[0] / width)
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


@dataclass
class ImageMeta:
    """Where one image went: its original (h, w), its resized (h, w) and the (w, h) resize factors."""
    ori_shape: Tuple[int, int]
    img_shape: Tuple[int, int]
    scale_factor: Tuple[float, float]


def resized_size(height: int, width: int, resize: Optional[dict]) -> Tuple[int, int]:
    """(new_h, new_w) of an image as ``resize_image`` resizes it."""
    if not resize:
        return height, width
    scale = resize['scale']
    new_w, new_h = fit_size(width, height, scale) if resize.get('keep_ratio', True) else scale
    return int(new_h), int(new_w)


def resize_image(image: np.ndarray, resize: Optional[dict]) -> np.ndarray:
    """mmcv's ``Resize`` on the image (cv2 backend, bilinear) to ``resize['scale']`` (w, h), keeping the aspect
    ratio (``fit_size``) or not; ``resize`` None leaves it as it is."""
    height, width = image.shape[:2]
    new_h, new_w = resized_size(height, width, resize)
    if (new_h, new_w) == (height, width):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def normalize(image: np.ndarray, preprocess: dict) -> np.ndarray:
    """HWC BGR uint8 -> CHW float32, colour order and ``(x - mean) / std`` as the data preprocessors do."""
    if preprocess.get('bgr_to_rgb', False):
        image = image[..., ::-1]
    chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    mean = preprocess.get('mean')
    std = preprocess.get('std')
    if mean is not None:
        chw = chw - np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    if std is not None:
        chw = chw / np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return chw


def pad_to(chw: np.ndarray, size: Sequence[int], pad_value: float) -> np.ndarray:
    """Pad right and bottom to ``size`` (h, w), as ``stack_batch`` does."""
    channels, height, width = chw.shape
    padded = np.full((channels, int(size[0]), int(size[1])), pad_value, dtype=np.float32)
    padded[:, :height, :width] = chw
    return padded


def preprocess(image: np.ndarray, meta: dict) -> Tuple[np.ndarray, ImageMeta]:
    """One BGR image -> the graph's CHW input and where the image went (for ``postprocess``).

    The graph's input size is fixed at export; the resized image must fit in it (it is padded up to it).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise RuntimeInputError(f'expected an HxWx3 BGR image, got an array of shape {image.shape}')
    cfg = meta['preprocess']
    resized = resize_image(image, cfg.get('resize'))
    height, width = image.shape[:2]
    new_h, new_w = resized.shape[:2]
    input_h, input_w = meta['input_size']
    if new_h > input_h or new_w > input_w:
        how = f'resized to {new_h}x{new_w}' if cfg.get('resize') else 'not resized by the config'
        raise RuntimeInputError(
            f'a {height}x{width} image ({how}) does not fit the graph\'s fixed input of {input_h}x{input_w} '
            f'(h x w); re-export with --shape {_padded(new_h, cfg)} {_padded(new_w, cfg)} or larger')
    chw = pad_to(normalize(resized, cfg), (input_h, input_w), float(cfg.get('pad_value', 0)))
    return chw, ImageMeta((height, width), (new_h, new_w), (new_w / width, new_h / height))


def padding_note(image: np.ndarray, meta: dict) -> Optional[str]:
    """None when the image, resized and padded to the size divisor on its own (as mmdet / mmseg pad one image),
    is exactly the graph's input; otherwise why its result can differ from the PyTorch model's on this image
    alone: the graph pads it further, and DaViT's attention, which spans the whole input, sees that padding."""
    cfg = meta['preprocess']
    new_h, new_w = resized_size(image.shape[0], image.shape[1], cfg.get('resize'))
    own = (_padded(new_h, cfg), _padded(new_w, cfg))
    input_h, input_w = meta['input_size']
    if own == (input_h, input_w):
        return None
    return (f'resized to {new_h}x{new_w}, it fills {own[0]}x{own[1]} of the graph\'s {input_h}x{input_w} input after '
            f'padding to the size divisor; the rest is padding that the model alone would not see (DaViT\'s '
            f'attention spans the whole input), so results can differ from the PyTorch model\'s on this image. '
            f'Export with --shape {new_h} {new_w} for images of this size')


def _padded(size: int, cfg: dict) -> int:
    divisor = int(cfg.get('pad_size_divisor') or 1)
    return int(math.ceil(size / divisor) * divisor)


# ---------------------------------------------------------------------------------------------------------------
# Postprocessing


def rescale_boxes(boxes: np.ndarray, scale_factor: Tuple[float, float]) -> np.ndarray:
    """Boxes from the resized image back to the original: (x1, y1, x2, y2) divided by the (w, h) factors."""
    factors = np.asarray(scale_factor * 2, dtype=np.float32)
    return (boxes.astype(np.float32) / factors).astype(np.float32)


def clip_boxes(boxes: np.ndarray, img_shape: Tuple[int, int]) -> np.ndarray:
    """Boxes clipped to the resized image (h, w), as mmdet's box decoding clips them to ``img_shape``. Graphs with
    an ``image_shapes`` input have done so already; older ones (without it) only knew their fixed input size."""
    boxes = boxes.astype(np.float32).copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, img_shape[1])
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, img_shape[0])
    return boxes


def _grid_axis(lo: np.float32, hi: np.float32, start: int, stop: int, mask_size: int) -> np.ndarray:
    """Sampling positions in mask pixels for image pixels ``start..stop-1`` of a box spanning [lo, hi]: mmdet's
    normalised grid (pixel centres), unnormalised as ``grid_sample(align_corners=False)`` does."""
    centres = np.arange(start, stop, dtype=np.float32) + np.float32(0.5)
    grid = (centres - lo) / (hi - lo) * np.float32(2) - np.float32(1)
    grid[np.isinf(grid)] = 0  # a zero-width box: mmdet zeroes the infinities
    return (grid + np.float32(1)) * np.float32(mask_size / 2) - np.float32(0.5)


def _bilinear_taps(position: np.ndarray, size: int):
    """For each sampling position: the two neighbouring indices (clipped), their weights and whether each lies
    inside the mask (outside samples read as zero)."""
    low = np.floor(position)
    weight_high = (position - low).astype(np.float32)
    weight_low = (np.float32(1) - weight_high).astype(np.float32)
    low = low.astype(np.int64)
    high = low + 1
    inside_low = (low >= 0) & (low < size)
    inside_high = (high >= 0) & (high < size)
    return np.clip(low, 0, size - 1), np.clip(high, 0, size - 1), weight_low, weight_high, inside_low, inside_high


def paste_mask(mask: np.ndarray, box: np.ndarray, img_h: int, img_w: int) -> np.ndarray:
    """One M x M mask probability map pasted into an (img_h, img_w) image at ``box``: mmdet's ``_do_paste_mask``
    as its CPU path runs it (one mask per chunk, only the box's region plus one pixel computed, zero elsewhere).
    Returns float32 probabilities."""
    mask = np.asarray(mask, dtype=np.float32)
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    out = np.zeros((img_h, img_w), dtype=np.float32)
    col0 = max(int(np.floor(x0)) - 1, 0)
    row0 = max(int(np.floor(y0)) - 1, 0)
    col1 = min(int(np.ceil(x1)) + 1, img_w)
    row1 = min(int(np.ceil(y1)) + 1, img_h)
    if col1 <= col0 or row1 <= row0:
        return out
    size_y, size_x = mask.shape
    y_lo, y_hi, wy_lo, wy_hi, in_y_lo, in_y_hi = _bilinear_taps(_grid_axis(y0, y1, row0, row1, size_y), size_y)
    x_lo, x_hi, wx_lo, wx_hi, in_x_lo, in_x_hi = _bilinear_taps(_grid_axis(x0, x1, col0, col1, size_x), size_x)

    def tap(rows, cols, in_rows, in_cols):
        values = mask[rows[:, None], cols[None, :]]
        return np.where(in_rows[:, None] & in_cols[None, :], values, np.float32(0))

    # The four neighbours in grid_sample's order (north-west, north-east, south-west, south-east).
    nw = wy_lo[:, None] * wx_lo[None, :]
    ne = wy_lo[:, None] * wx_hi[None, :]
    sw = wy_hi[:, None] * wx_lo[None, :]
    se = wy_hi[:, None] * wx_hi[None, :]
    region = (tap(y_lo, x_lo, in_y_lo, in_x_lo) * nw + tap(y_lo, x_hi, in_y_lo, in_x_hi) * ne
              + tap(y_hi, x_lo, in_y_hi, in_x_lo) * sw + tap(y_hi, x_hi, in_y_hi, in_x_hi) * se)
    out[row0:row1, col0:col1] = region
    return out


def resize_bilinear(array: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W), bilinear with half-pixel centres as ``F.interpolate(align_corners=False)``
    (no antialiasing), in float32."""
    array = np.asarray(array, dtype=np.float32)

    def axis(in_size: int, out_size: int):
        position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * np.float32(in_size / out_size) \
            - np.float32(0.5)
        position = np.maximum(position, np.float32(0))
        low = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        weight_high = (position - low).astype(np.float32)
        return low, high, (np.float32(1) - weight_high), weight_high

    y_lo, y_hi, wy_lo, wy_hi = axis(array.shape[1], size[0])
    x_lo, x_hi, wx_lo, wx_hi = axis(array.shape[2], size[1])
    rows = array[:, y_lo, :] * wy_lo[None, :, None] + array[:, y_hi, :] * wy_hi[None, :, None]
    return rows[:, :, x_lo] * wx_lo[None, None, :] + rows[:, :, x_hi] * wx_hi[None, None, :]


@dataclass
class Prediction:
    """One image's results in its original frame. Detection/instance: ``boxes`` [N, 4] (x1, y1, x2, y2),
    ``scores`` [N], ``labels`` [N], and ``masks`` [N, H, W] bool for instance models; semantic: ``sem_seg``
    [H, W] class indices."""
    boxes: Optional[np.ndarray] = None
    scores: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None
    sem_seg: Optional[np.ndarray] = None
    extra: Dict[str, np.ndarray] = field(default_factory=dict)


def postprocess_detections(outputs: Dict[str, np.ndarray], index: int, image_meta: ImageMeta, meta: dict,
                           score_thr: float = 0.0) -> Prediction:
    """Valid rows (``num_dets``, else score > 0 and label >= 0) scoring at least ``score_thr``, boxes in the
    original frame; instance masks pasted and thresholded there."""
    dets = outputs['dets'][index]
    labels = outputs['labels'][index].astype(np.int64)
    if 'num_dets' in outputs:
        valid = np.arange(len(dets)) < int(outputs['num_dets'][index])
    else:
        valid = (labels >= 0) & (dets[:, 4] > 0)
    keep = np.flatnonzero(valid & (dets[:, 4] >= score_thr))
    boxes = clip_boxes(dets[keep, :4], image_meta.img_shape)
    boxes = rescale_boxes(boxes, image_meta.scale_factor)
    prediction = Prediction(boxes=boxes, scores=dets[keep, 4].astype(np.float32), labels=labels[keep])
    if meta['task'] == 'instance' and 'masks' in outputs:
        prediction.masks = instance_masks(outputs['masks'][index][keep], boxes, image_meta, meta)
    return prediction


def instance_masks(masks: np.ndarray, boxes: np.ndarray, image_meta: ImageMeta, meta: dict) -> np.ndarray:
    """[N, H, W] bool masks in the original image from the graph's mask output: 28x28 (or any M x M smaller than
    the input) pasted at the rescaled boxes as mmdet does; full input-size maps (``--paste-masks``) cropped to the
    resized image and resized bilinearly to the original."""
    threshold = float(meta.get('mask_thr_binary', 0.5))
    height, width = image_meta.ori_shape
    if len(masks) == 0:
        return np.zeros((0, height, width), dtype=bool)
    # maps of the whole network input (or of the exported image size inside it) versus small per-box masks
    if tuple(masks.shape[1:]) in (tuple(meta['input_size']), tuple(meta.get('image_size') or ())):
        new_h, new_w = image_meta.img_shape
        return resize_bilinear(masks[:, :new_h, :new_w], (height, width)) >= threshold
    return np.stack([paste_mask(mask, box, height, width) >= threshold for mask, box in zip(masks, boxes)])


def postprocess_semantic(outputs: Dict[str, np.ndarray], index: int, image_meta: ImageMeta,
                         meta: Optional[dict] = None) -> Prediction:
    """The class map in the original frame: logits cropped to the resized image, resized to the original size and
    arg-maxed (mmseg's ``postprocess_result``); with labels only, nearest-neighbour resized labels."""
    meta = meta or {}
    new_h, new_w = image_meta.img_shape
    height, width = image_meta.ori_shape
    if 'seg_logits' in outputs:
        logits = outputs['seg_logits'][index][:, :new_h, :new_w]
        if (new_h, new_w) != (height, width):
            logits = resize_bilinear(logits, (height, width))
        if logits.shape[0] == 1:  # one channel: mmseg thresholds the sigmoid (decode head's threshold, 0.3)
            probability = np.float32(1) / (np.float32(1) + np.exp(-logits[0]))
            return Prediction(sem_seg=(probability > float(meta.get('seg_threshold', 0.3))).astype(np.int64))
        return Prediction(sem_seg=logits.argmax(axis=0).astype(np.int64))
    labels = outputs['seg_labels'][index][:new_h, :new_w].astype(np.int32)
    resized = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    return Prediction(sem_seg=resized.astype(np.int64))


# ---------------------------------------------------------------------------------------------------------------
# The model


class OnnxModel:
    """An exported mmdavit model in ONNX Runtime: ``predict(images)`` from BGR images to ``Prediction``s.

    Args:
        path: the ``.onnx`` file written by tools/deployment/export_onnx.py.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(self, path: str, providers: Optional[List[str]] = None, threads: Optional[int] = None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ['CPUExecutionProvider'])
        except Exception as error:  # onnxruntime raises its own Fail / InvalidProtobuf / NoSuchFile types
            raise RuntimeInputError(f'{path}: ONNX Runtime cannot load it ({type(error).__name__}: {error})') from None
        self.path = str(path)
        self.meta = read_metadata(self.session, self.path)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.takes_image_shapes = 'image_shapes' in [other.name for other in self.session.get_inputs()]
        batch = graph_input.shape[0]
        self.batch_size = batch if isinstance(batch, int) and batch > 0 else None  # None: any batch size
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def task(self) -> str:
        return self.meta['task']

    @property
    def classes(self) -> List[str]:
        return list(self.meta.get('classes') or [])

    def run(self, batch: np.ndarray, image_shapes: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """The graph on preprocessed inputs [B, 3, H, W] whose resized images are ``image_shapes`` [B, 2] (h, w)
        inside them (default: the exported image size); a fixed batch size is filled with copies of the last
        image (their outputs dropped)."""
        count = len(batch)
        if image_shapes is None:
            image_shapes = np.tile(np.asarray(self.meta.get('image_size') or self.meta['input_size']), (count, 1))
        image_shapes = np.asarray(image_shapes, dtype=np.int64).reshape(count, 2)
        if self.batch_size and count < self.batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - count, axis=0)])
            image_shapes = np.concatenate([image_shapes, np.repeat(image_shapes[-1:], self.batch_size - count, 0)])
        feeds = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        if self.takes_image_shapes:
            feeds['image_shapes'] = image_shapes
        outputs = self.session.run(None, feeds)
        return {name: value[:count] for name, value in zip(self.output_names, outputs)}

    def predict(self, images: Sequence[np.ndarray], score_thr: float = 0.0) -> List[Prediction]:
        """BGR uint8 images (any size the graph's input holds after resizing) -> one ``Prediction`` each."""
        predictions = []
        step = self.batch_size or max(len(images), 1)
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            inputs, image_metas = zip(*(preprocess(image, self.meta) for image in chunk))
            outputs = self.run(np.stack(inputs), np.array([image_meta.img_shape for image_meta in image_metas]))
            for index, image_meta in enumerate(image_metas):
                if self.task == 'semantic':
                    predictions.append(postprocess_semantic(outputs, index, image_meta, self.meta))
                else:
                    predictions.append(postprocess_detections(outputs, index, image_meta, self.meta, score_thr))
        return predictions


# ---------------------------------------------------------------------------------------------------------------
# Drawing


def palette_for(meta: dict, count: int) -> List[Tuple[int, int, int]]:
    """RGB colours per class: the dataset's palette from the metadata, else fixed random ones (as mmdet's
    'random' palette: seed 42)."""
    palette = [tuple(int(c) for c in colour) for colour in (meta.get('palette') or [])]
    if len(palette) < count:
        state = np.random.RandomState(42)
        extra = state.randint(0, 256, size=(count, 3))
        palette += [tuple(int(c) for c in colour) for colour in extra[len(palette):]]
    return palette


def class_name(meta: dict, label: int) -> str:
    classes = meta.get('classes') or []
    return classes[label] if 0 <= label < len(classes) else f'class {label}'


def _put_label(canvas: np.ndarray, text: str, origin: Tuple[int, int], font_scale: float, color) -> None:
    """``text`` on a dark box whose top-left corner is ``origin``, as the mm visualizers label things."""
    thickness = max(1, int(round(font_scale * 1.5)))
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    x, y = int(origin[0]), int(origin[1])
    x = min(max(x, 0), max(canvas.shape[1] - text_w - 2, 0))
    y = min(max(y, 0), max(canvas.shape[0] - text_h - baseline - 2, 0))
    box = canvas[y:y + text_h + baseline + 2, x:x + text_w + 2]
    box[:] = (box * 0.2).astype(np.uint8)  # mmdet: black background at alpha 0.8
    cv2.putText(canvas, text, (x + 1, y + text_h + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, thickness,
                cv2.LINE_AA)


def draw(image: np.ndarray, prediction: Prediction, meta: dict, scale: float = 1.0, alpha: float = 0.8) -> np.ndarray:
    """A BGR picture of ``prediction`` over ``image`` (BGR), enlarged ``scale`` times (as mmdavit's Enlarged*
    visualizers do for small images). Detections: masks blended at ``alpha``, boxes and ``class: score%``
    labels in class colours; segmentation: the class map blended at ``alpha`` with the class names."""
    if scale < 1:
        raise RuntimeInputError(f'scale must be >= 1 (how many times the picture is enlarged), got {scale}')
    height, width = image.shape[:2]
    size = (round(width * scale), round(height * scale))
    canvas = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) if scale != 1 else image.copy()
    font_scale = max(0.35, min(size) / 600)
    if prediction.sem_seg is not None:
        return _draw_semantic(canvas, prediction.sem_seg, meta, alpha, font_scale)
    labels = prediction.labels if prediction.labels is not None else np.zeros(0, dtype=np.int64)
    palette = palette_for(meta, max(len(meta.get('classes') or []), int(labels.max(initial=-1)) + 1))
    colors_bgr = [palette[int(label)][::-1] for label in labels]
    if prediction.masks is not None:
        for mask, color in zip(prediction.masks, colors_bgr):
            if scale != 1:
                mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
            canvas[mask] = (canvas[mask] * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
    line_width = max(1, int(round(2 * min(size) / 400)) + 1)
    for box, score, label, color in zip(prediction.boxes, prediction.scores, labels, colors_bgr):
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        cv2.rectangle(canvas, (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2))), color,
                      line_width, cv2.LINE_AA)
        text = f'{class_name(meta, int(label))}: {round(float(score) * 100, 1)}'
        _put_label(canvas, text, (x1 + line_width, y1 + line_width), font_scale, (200, 200, 200))
    return canvas


def _draw_semantic(canvas: np.ndarray, sem_seg: np.ndarray, meta: dict, alpha: float, font_scale: float):
    size = (canvas.shape[1], canvas.shape[0])
    if sem_seg.shape != canvas.shape[:2]:
        sem_seg = cv2.resize(sem_seg.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    present = [int(label) for label in np.unique(sem_seg) if label >= 0]
    palette = palette_for(meta, max(len(meta.get('classes') or []), max(present, default=-1) + 1))
    colored = canvas.copy()
    for label in present:
        colored[sem_seg == label] = palette[label][::-1]
    canvas = (canvas * (1 - alpha) + colored * alpha).astype(np.uint8)
    for label in present:  # the class name at the middle of its largest region, as mmseg labels the map
        count, regions, stats, centroids = cv2.connectedComponentsWithStats((sem_seg == label).astype(np.uint8))
        if count < 2:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        cx, cy = centroids[largest]
        _put_label(canvas, class_name(meta, label), (cx - 10, cy - 8), font_scale, (255, 255, 255))
    return canvas
