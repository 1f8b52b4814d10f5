"""Export wrapper for mmseg's ``EncoderDecoder`` in whole mode: UperNet and Mask2Former (ADE20K semantic).

``forward(images)`` runs ``encode_decode`` -- backbone, neck, decode head and the head's own ``predict``
(UperNet: logits resized to the input; Mask2Former: softmax class scores without "no object" times the sigmoid
masks, summed over queries) -- then what mmseg's ``postprocess_result`` does at the input size: the argmax
(or, for a single output channel, the sigmoid and the head's threshold). Outputs ``seg_logits`` float32
[B, C, H, W] and ``seg_labels`` int64 [B, H, W] at the graph's input size; the runtime crops the padding and
resizes to the original image, as ``postprocess_result`` does. Mask2Former's deformable pixel decoder runs as
in the instance wrapper (``mmdavit.deploy.query_based``: grid_sample at static level sizes).

UperNet's pyramid pooling uses ``nn.AdaptiveAvgPool2d(1, 2, 3, 6)``. The dynamo exporter decomposes it
exactly; the TorchScript exporter refuses output sizes that do not divide the input (e.g. 6 on a 16 x 16 map),
and rewriting it as ``avg_pool2d`` with a rounded kernel (mmdeploy) is wrong whenever they do not divide. While
the TorchScript exporter traces, :func:`exact_adaptive_pooling` swaps each adaptive pool for two matrix
products with the pooling matrices of the traced size (:func:`adaptive_pool_matrix`), the same average over
the same windows. The model's modules are put back when the trace ends.
"""
import contextlib
import math
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from mmdavit.deploy.export import register_wrapper
from mmdavit.deploy.query_based import deformable_attention_at


def adaptive_pool_matrix(in_size: int, out_size: int, dtype=torch.float32, device=None) -> Tensor:
    """[out_size, in_size]: row i averages input cells floor(i * in / out) .. ceil((i + 1) * in / out) - 1,
    PyTorch's adaptive average pooling windows."""
    matrix = torch.zeros(out_size, in_size, dtype=dtype, device=device)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = math.ceil((i + 1) * in_size / out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as ``P_h @ x @ P_w^T`` with matrices built for the size it is called at (a trace
    records them as constants: the graph is valid for that size only, as the rest of the graph is)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        height, width = int(x.shape[-2]), int(x.shape[-1])
        out = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size, ) * 2
        out_h, out_w = (side if side is not None else full for side, full in zip(out, (height, width)))
        rows = adaptive_pool_matrix(height, out_h, x.dtype, x.device)
        cols = adaptive_pool_matrix(width, out_w, x.dtype, x.device)
        return torch.matmul(torch.matmul(rows, x), cols.t())


@contextlib.contextmanager
def exact_adaptive_pooling(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``nn.AdaptiveAvgPool2d`` of ``model`` is a :class:`MatrixAdaptiveAvgPool2d`;
    the original modules are restored on exit."""
    swapped = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.AdaptiveAvgPool2d:
                swapped.append((parent, name, child))
                setattr(parent, name, MatrixAdaptiveAvgPool2d(child.output_size))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class SegmentorWrapper(nn.Module):
    """mmseg ``EncoderDecoder`` (UperNet, Mask2Former, any decode head) in ``mode='whole'``."""
    task = 'semantic'
    output_names = ['seg_logits', 'seg_labels']

    def __init__(self, model: nn.Module):
        super().__init__()
        mode = (getattr(model, 'test_cfg', None) or {}).get('mode', 'whole')
        if mode != 'whole':
            raise NotImplementedError(
                f"ONNX export supports mmseg's whole-image inference; this model's test_cfg has mode={mode!r} "
                "(set model.test_cfg.mode='whole', e.g. --cfg-options model.test_cfg.mode=whole)")
        self.model = model

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        size = tuple(int(side) for side in images.shape[-2:])
        metas = [dict(img_shape=size, pad_shape=size, ori_shape=size)] * int(images.shape[0])
        model = self.model
        pooling = exact_adaptive_pooling(model) if torch.jit.is_tracing() else contextlib.nullcontext()
        with pooling:
            feats = model.extract_feat(images)  # encode_decode, with the feature sizes at hand
            with deformable_attention_at(model.decode_head, feats):
                logits = model.decode_head.predict(feats, metas, model.test_cfg)
        if logits.shape[1] > 1:
            return logits, logits.argmax(dim=1)
        # one channel: mmseg returns the sigmoid and thresholds it with the head's threshold
        probabilities = logits.sigmoid()
        return probabilities, (probabilities > model.decode_head.threshold)[:, 0].long()


@register_wrapper('EncoderDecoder')
def build_segmentor(model, cfg, *, score_thr: Optional[float] = None, max_dets: Optional[int] = None,
                    paste_masks: bool = False, image_size=None) -> nn.Module:
    # score_thr / max_dets / paste_masks are detection options: semantic segmentation has none of them
    return SegmentorWrapper(model)
