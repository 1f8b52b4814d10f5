"""Tensor post-processing that exports to standard ONNX ops and keeps mmdet's semantics.

Everything here works on one image's candidates at static sizes; the only data-dependent step is the NMS itself
(``NonZero`` -> ``NonMaxSuppression``), whose result is scattered back onto the static candidate set and cut to a
fixed ``k`` with ``TopK``. So the graph's outputs have fixed shapes, padded after the valid rows.
"""
from typing import Optional, Sequence, Tuple

import math

import torch
import torchvision
from torch import Tensor
from torch.nn import functional as F


def delta2bbox(rois: Tensor, deltas: Tensor, means: Sequence[float], stds: Sequence[float], max_shape: Tensor,
               wh_ratio_clip: float = 16 / 1000, clip_border: bool = True) -> Tensor:
    """mmdet's ``delta2bbox`` (DeltaXYWHBBoxCoder), the same float operations in the same order.

    Written out because mmdet's coder switches to ``onnx_delta2bbox`` (other ops) while exporting, and its
    in-place border clamp on a strided view is awkward for exporters. ``rois`` [N, 4], ``deltas`` [N, 4 * c]
    -> boxes [N, 4 * c] in x1, y1, x2, y2, clipped to ``max_shape``: (h, w) for all boxes ([2]) or per RoI
    ([N, 2]), a tensor so that the graph clips each image to its own size.
    """
    num_boxes, num_classes = deltas.shape[0], deltas.shape[1] // 4
    deltas = deltas.reshape(-1, 4)
    means = deltas.new_tensor(means).view(1, -1)
    stds = deltas.new_tensor(stds).view(1, -1)
    denorm = deltas * stds + means
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    rois = rois.repeat(1, num_classes).reshape(-1, 4)
    pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
    pwh = rois[:, 2:] - rois[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = abs(math.log(wh_ratio_clip))
    dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    x1y1 = gxy - gwh * 0.5
    x2y2 = gxy + gwh * 0.5
    if clip_border:  # clamp(min=0, max=size), per RoI and class: [N * c, 2] viewed as [N, c, 2]
        limit = max_shape.flip(-1).to(x1y1.dtype).reshape(-1, 1, 2)  # (w, h)
        x1y1 = torch.minimum(x1y1.reshape(num_boxes, num_classes, 2).clamp(min=0), limit).reshape(-1, 2)
        x2y2 = torch.minimum(x2y2.reshape(num_boxes, num_classes, 2).clamp(min=0), limit).reshape(-1, 2)
    return torch.cat([x1y1, x2y2], dim=-1).reshape(num_boxes, -1)


def decode_boxes(coder, priors: Tensor, deltas: Tensor, max_shape: Tensor) -> Tensor:
    """Decode with an mmdet ``DeltaXYWHBBoxCoder`` (the only coder the RetinaNet / R-CNN configs use)."""
    if type(coder).__name__ != 'DeltaXYWHBBoxCoder' or getattr(coder, 'add_ctr_clamp', False):
        raise NotImplementedError(f'ONNX export supports DeltaXYWHBBoxCoder box coders, got {type(coder).__name__}'
                                  f'{" with add_ctr_clamp" if getattr(coder, "add_ctr_clamp", False) else ""}')
    return delta2bbox(priors, deltas, coder.means, coder.stds, max_shape, clip_border=coder.clip_border)


def nms_topk(boxes: Tensor, scores: Tensor, valid: Tensor, groups: Tensor, iou_threshold: float, k: int,
             num_groups: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """mmcv's ``batched_nms`` on the valid candidates, then the first ``k`` kept boxes by score.

    boxes [N, 4], scores [N], valid [N] bool, groups [N] int (NMS runs within a group: class or level).
    As mmcv below 10,000 boxes, groups are separated by offsetting each box by ``group * (max coordinate + 1)``
    (the maximum over the valid boxes). With ``num_groups`` (candidates laid out [N / num_groups, num_groups],
    the group being the column), NMS runs once per group, as mmcv does above 10,000 boxes: ONNX Runtime's
    ``NonMaxSuppression`` compares every candidate with every box kept so far, so one NMS over, e.g., 1000 RoIs
    x 80 classes costs seconds where 80 small ones cost milliseconds. Returns ``index`` [k] into the N
    candidates, sorted by score descending, and ``kept`` [k] bool, False on padding rows (their index is
    arbitrary).
    """
    num_candidates = scores.shape[0]
    if num_groups is None:
        kept_mask = _kept_offset(boxes, scores, valid, groups, iou_threshold)
    else:
        kept_mask = _kept_per_group(boxes, scores, valid, num_groups, iou_threshold)
    # kept candidates first, by score; scores are >= 0 (sigmoid / softmax outputs)
    ranked = torch.where(kept_mask > 0, scores, scores.new_full((), -1.0))
    if num_candidates < k:
        ranked = torch.cat([ranked, ranked.new_full((k - num_candidates, ), -2.0)])
    top_scores, index = ranked.topk(k)
    return index.clamp(max=num_candidates - 1), top_scores >= 0


def _kept_offset(boxes: Tensor, scores: Tensor, valid: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """[N] 1.0 where a candidate survives one NMS over all groups, kept apart by coordinate offsets."""
    candidates = torch.nonzero(valid).squeeze(1)
    cand_boxes = boxes[candidates]
    # mmcv: boxes.max() over the candidates; the appended 0 only matters when there is none
    max_coordinate = torch.cat([cand_boxes.reshape(-1), cand_boxes.new_zeros(1)]).max()
    offsets = groups[candidates].to(boxes.dtype) * (max_coordinate + 1)
    keep = torchvision.ops.nms(cand_boxes + offsets[:, None], scores[candidates], iou_threshold)
    return scores.new_zeros(scores.shape[0]).scatter(0, candidates[keep], scores.new_ones(keep.shape[0]))


def _kept_per_group(boxes: Tensor, scores: Tensor, valid: Tensor, num_groups: int, iou_threshold: float) -> Tensor:
    """[N] 1.0 where a candidate survives the NMS of its group (column of [N / num_groups, num_groups])."""
    kept_mask = scores.new_zeros(scores.shape[0])
    boxes = boxes.reshape(-1, num_groups, 4)
    scores, valid = scores.reshape(-1, num_groups), valid.reshape(-1, num_groups)
    for group in range(num_groups):
        candidates = torch.nonzero(valid[:, group]).squeeze(1)
        keep = torchvision.ops.nms(boxes[candidates, group], scores[candidates, group], iou_threshold)
        positions = candidates[keep] * num_groups + group
        kept_mask = kept_mask.scatter(0, positions, kept_mask.new_ones(keep.shape[0]))
    return kept_mask


def topk_candidates(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, sorted; all of them if there are fewer (mmdet's nms_pre: k <= 0)."""
    if k <= 0 or k >= scores.shape[0]:
        return scores.sort(descending=True)[1]
    return scores.topk(k)[1]


def multi_level_roi_align(feats: Sequence[Tensor], rois: Tensor, roi_extractor) -> Tensor:
    """mmdet's ``SingleRoIExtractor`` with ``torchvision.ops.roi_align`` (standard ONNX ``RoiAlign``).

    Every RoI is pooled from every level and the one its scale maps to is kept (mmdet pools each RoI at its
    level only): static shapes for the exporters, the same values. ``rois`` [n, 5] (batch index, x1, y1, x2, y2).
    """
    if type(roi_extractor).__name__ != 'SingleRoIExtractor':
        raise NotImplementedError(f'ONNX export supports SingleRoIExtractor, got {type(roi_extractor).__name__}')
    layers = roi_extractor.roi_layers
    num_levels = len(layers)
    feats = feats[:num_levels]
    rois = rois.to(feats[0].dtype)
    pooled = []
    for feat, layer in zip(feats, layers):
        if getattr(layer, 'pool_mode', 'avg') != 'avg':
            raise NotImplementedError(f'ONNX export supports RoIAlign pool_mode="avg", got {layer.pool_mode!r}')
        pooled.append(torchvision.ops.roi_align(feat, rois, output_size=layer.output_size,
                                                spatial_scale=layer.spatial_scale,
                                                sampling_ratio=layer.sampling_ratio, aligned=layer.aligned))
    if num_levels == 1:
        return pooled[0]
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / roi_extractor.finest_scale + 1e-6)).clamp(min=0, max=num_levels - 1)
    out = pooled[0]
    for level in range(1, num_levels):
        out = torch.where((levels == level)[:, None, None, None], pooled[level], out)
    return out


def paste_masks(masks: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """mmdet's ``_do_paste_mask`` over the whole image: masks [n, h, w] probabilities, boxes [n, 4] ->
    [n, height, width] (bilinear ``GridSample``; mmdet's CPU path pastes only near the boxes, the same values
    there and below any threshold >= 0.5 elsewhere)."""
    x0, y0, x1, y1 = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    img_y = torch.arange(height, device=masks.device).to(torch.float32) + 0.5
    img_x = torch.arange(width, device=masks.device).to(torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)  # zero-size boxes, as mmdet
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
    n = masks.shape[0]
    gx = img_x[:, None, :].expand(n, height, width)
    gy = img_y[:, :, None].expand(n, height, width)
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks[:, None].to(torch.float32), grid, align_corners=False)[:, 0]
