"""Export wrappers for mmdet's RetinaNet, Mask R-CNN and Cascade Mask R-CNN.

Each wrapper's ``forward(images, image_shapes)`` runs the model's own modules (backbone, neck, heads) and
re-implements the test-time post-processing of mmdet 3.3 in tensor ops that export to standard ONNX
(``NonMaxSuppression``, ``RoiAlign``, ``TopK``, ``GridSample``), keeping its semantics:

- dense heads (RetinaNet): per level, ``nms_pre`` best of the flattened (anchor, class) scores above
  ``score_thr``; decode; ``min_bbox_size``; class-aware NMS; ``max_per_img``
  (mmdet ``BaseDenseHead._predict_by_feat_single``, ``filter_scores_and_topk``);
- RPN: per level the ``nms_pre`` best anchors; decode; ``min_bbox_size``; NMS within each level;
  ``max_per_img`` proposals (``RPNHead._predict_by_feat_single``);
- R-CNN: RoIAlign at the level each RoI's scale maps to; softmax; per-class decode; every (RoI, class) pair
  above ``score_thr``; class-aware NMS (one per class); ``max_per_img`` (``BBoxHead._predict_by_feat_single``,
  ``multiclass_nms``); masks from the final boxes, sigmoid, the label's channel;
- Cascade: each stage refines the RoIs with its argmax class's deltas; the final classification is the softmax
  of the stages' logits averaged; masks are the stages' sigmoids averaged (``CascadeRoIHead``).

Inputs: ``images`` [B, 3, H, W] and ``image_shapes`` [B, 2] int64, the (h, w) of each resized image inside
the padded input; mmdet clips every box (anchors decoded, proposals, cascade refinements, detections) to it, and
so does the graph, for each image its own.

Outputs (boxes in the network-input frame): ``dets`` [B, K, 5] (x1, y1, x2, y2, score), ``labels`` [B, K] int64,
``num_dets`` [B] int64: valid rows first by descending score, then padding rows with score 0 and label -1;
instance models add ``masks`` [B, K, 28, 28] (probabilities of the label's class in the box) or, with
``paste_masks``, [B, K, h, w] pasted at the exported ``image_size`` (crop them to the image's shape).
K = ``max_dets``.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from mmdavit.deploy.export import image_shapes_or_default, register_wrapper
from mmdavit.deploy.postprocess import decode_boxes, multi_level_roi_align, nms_topk, paste_masks, topk_candidates


def _nms_iou(cfg, where: str) -> float:
    nms = cfg.get('nms') or {}
    if nms.get('type', 'nms') != 'nms' or nms.get('class_agnostic', False):
        raise NotImplementedError(f'ONNX export supports plain class-aware NMS (type="nms"); {where} uses {nms}')
    return float(nms['iou_threshold'])


def _apply_overrides(test_cfg, score_thr: Optional[float], max_dets: Optional[int]) -> None:
    """Write --score-thr / --max-dets into the model's own test_cfg, so that its ``predict`` (the reference
    the export is verified against) uses them too."""
    if score_thr is not None:
        test_cfg['score_thr'] = float(score_thr)
    if max_dets is not None:
        test_cfg['max_per_img'] = int(max_dets)


def _pad_rows(rows: Tensor, kept: Tensor, fill: float) -> Tensor:
    shape = (-1, ) + (1, ) * (rows.dim() - 1)
    return torch.where(kept.reshape(shape), rows, torch.full_like(rows, fill))


def _class_scores(head, logits: Tensor) -> Tensor:
    if getattr(head, 'use_sigmoid_cls', True):
        return logits.sigmoid()
    return logits.softmax(-1)[:, :-1]


def _priors(head, cls_scores: List[Tensor]) -> List[Tensor]:
    sizes = [score.shape[-2:] for score in cls_scores]
    return head.prior_generator.grid_priors(sizes, dtype=cls_scores[0].dtype, device=cls_scores[0].device)


def _check_dense_head(head) -> None:
    if getattr(head.loss_cls, 'custom_cls_channels', False):
        raise NotImplementedError(f'ONNX export does not support custom classification channels '
                                  f'({type(head.loss_cls).__name__})')


class _DetectorWrapper(nn.Module):
    task = 'detection'
    input_names = ['images', 'image_shapes']
    output_names = ['dets', 'labels', 'num_dets']

    def __init__(self, model: nn.Module, image_size: Optional[Tuple[int, int]]):
        super().__init__()
        self.model = model
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))

    def paste_shape(self, images: Tensor) -> Tuple[int, int]:
        return self.image_size or (int(images.shape[-2]), int(images.shape[-1]))

    @staticmethod
    def detections(boxes: Tensor, scores: Tensor, labels: Tensor, index: Tensor, kept: Tensor):
        dets = torch.cat([boxes[index], scores[index][:, None]], dim=1)
        return _pad_rows(dets, kept, 0.0), _pad_rows(labels[index], kept, -1), kept.sum().reshape(())

    @staticmethod
    def stack(per_image: list) -> Tuple[Tensor, ...]:
        return tuple(torch.stack(parts) for parts in zip(*per_image))


class RetinaNetWrapper(_DetectorWrapper):
    """RetinaNet (any mmdet single-stage detector whose head is an ``AnchorHead`` with a delta coder)."""

    def __init__(self, model, image_size=None, score_thr=None, max_dets=None):
        super().__init__(model, image_size)
        head = model.bbox_head
        _check_dense_head(head)
        self.cfg = head.test_cfg
        _apply_overrides(self.cfg, score_thr, max_dets)
        self.iou_threshold = _nms_iou(self.cfg, 'bbox_head.test_cfg')
        self.max_dets = int(self.cfg['max_per_img'])

    def forward(self, images: Tensor, image_shapes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        head, cfg = self.model.bbox_head, self.cfg
        image_shapes = image_shapes_or_default(images, image_shapes, self.image_size)
        cls_scores, bbox_preds = head(self.model.extract_feat(images))
        priors = _priors(head, cls_scores)
        score_thr, nms_pre = float(cfg.get('score_thr', 0)), int(cfg.get('nms_pre', -1))
        min_size = cfg.get('min_bbox_size', -1)
        per_image = []
        for i in range(images.shape[0]):
            boxes, scores, labels, valid = [], [], [], []
            for cls_score, bbox_pred, level_priors in zip(cls_scores, bbox_preds, priors):
                level_scores = _class_scores(head, cls_score[i].permute(1, 2, 0).reshape(-1, head.cls_out_channels))
                num_classes = level_scores.shape[1]
                flat = level_scores.reshape(-1)
                # filter_scores_and_topk: the nms_pre best (anchor, class) pairs among those above score_thr
                index = topk_candidates(torch.where(flat > score_thr, flat, flat.new_full((), -1.0)), nms_pre)
                anchors = torch.div(index, num_classes, rounding_mode='floor')
                deltas = bbox_pred[i].permute(1, 2, 0).reshape(-1, 4)[anchors]
                boxes.append(decode_boxes(head.bbox_coder, level_priors[anchors], deltas, image_shapes[i]))
                scores.append(flat[index])
                labels.append(index % num_classes)
                valid.append(flat[index] > score_thr)
            boxes, scores, labels, valid = (torch.cat(parts) for parts in (boxes, scores, labels, valid))
            if min_size >= 0:
                valid = valid & (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)
            index, kept = nms_topk(boxes, scores, valid, labels, self.iou_threshold, self.max_dets)
            per_image.append(self.detections(boxes, scores, labels, index, kept))
        return self.stack(per_image)


class TwoStageWrapper(_DetectorWrapper):
    """Mask R-CNN / Faster R-CNN (``StandardRoIHead``) and Cascade (Mask) R-CNN (``CascadeRoIHead``)."""

    def __init__(self, model, image_size=None, score_thr=None, max_dets=None, paste_masks=False):
        super().__init__(model, image_size)
        roi_head = model.roi_head
        self.cascade = type(roi_head).__name__ == 'CascadeRoIHead'
        if type(roi_head).__name__ not in ('StandardRoIHead', 'CascadeRoIHead'):
            raise NotImplementedError(f'ONNX export supports StandardRoIHead and CascadeRoIHead, '
                                      f'got {type(roi_head).__name__}')
        if getattr(roi_head, 'with_shared_head', False):
            raise NotImplementedError('ONNX export does not support R-CNN shared heads (shared_head)')
        self.rpn_cfg = model.rpn_head.test_cfg
        self.rcnn_cfg = roi_head.test_cfg
        _apply_overrides(self.rcnn_cfg, score_thr, max_dets)
        self.rpn_iou = _nms_iou(self.rpn_cfg, 'test_cfg.rpn')
        self.rcnn_iou = _nms_iou(self.rcnn_cfg, 'test_cfg.rcnn')
        self.max_dets = int(self.rcnn_cfg['max_per_img'])
        self.num_proposals = int(self.rpn_cfg['max_per_img'])
        bbox_heads = roi_head.bbox_head if self.cascade else [roi_head.bbox_head]
        for head in bbox_heads:
            if getattr(head, 'custom_cls_channels', False) or getattr(head, 'custom_activation', False):
                raise NotImplementedError(f'ONNX export does not support custom classification activations '
                                          f'({type(head.loss_cls).__name__})')
        self.with_mask = bool(getattr(roi_head, 'with_mask', False))
        self.paste_masks = bool(paste_masks) and self.with_mask
        if self.with_mask:
            self.task = 'instance'
            self.output_names = ['dets', 'labels', 'num_dets', 'masks']

    # -- RPN ---------------------------------------------------------------------------------------------------
    def proposals(self, feats, image_shapes: Tensor) -> Tuple[Tensor, Tensor]:
        """[B, P, 4] proposals (zeros on padding rows) and [B, P] validity, P = test_cfg.rpn.max_per_img."""
        head, cfg = self.model.rpn_head, self.rpn_cfg
        cls_scores, bbox_preds = head(feats)
        priors = _priors(head, cls_scores)
        nms_pre, min_size = int(cfg.get('nms_pre', -1)), cfg.get('min_bbox_size', -1)
        all_boxes, all_valid = [], []
        for i in range(cls_scores[0].shape[0]):
            boxes, scores, levels = [], [], []
            for level, (cls_score, bbox_pred, level_priors) in enumerate(zip(cls_scores, bbox_preds, priors)):
                level_scores = _class_scores(head, cls_score[i].permute(1, 2, 0).reshape(-1, head.cls_out_channels))
                level_scores = level_scores.reshape(-1)
                index = topk_candidates(level_scores, nms_pre)
                deltas = bbox_pred[i].permute(1, 2, 0).reshape(-1, 4)[index]
                boxes.append(decode_boxes(head.bbox_coder, level_priors[index], deltas, image_shapes[i]))
                scores.append(level_scores[index])
                levels.append(torch.full((index.shape[0], ), level, dtype=torch.long, device=index.device))
            boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
            valid = torch.ones_like(scores, dtype=torch.bool)
            if min_size >= 0:
                valid = (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)
            index, kept = nms_topk(boxes, scores, valid, levels, self.rpn_iou, self.num_proposals)
            all_boxes.append(_pad_rows(boxes[index], kept, 0.0))
            all_valid.append(kept)
        return torch.stack(all_boxes), torch.stack(all_valid)

    # -- R-CNN -------------------------------------------------------------------------------------------------
    @staticmethod
    def rois(boxes: Tensor) -> Tensor:
        """[B, n, 4] -> [B * n, 5] with the batch index first."""
        batch, n = boxes.shape[:2]
        index = torch.arange(batch, dtype=boxes.dtype, device=boxes.device).repeat_interleave(n)
        return torch.cat([index[:, None], boxes.reshape(-1, 4)], dim=1)

    def bbox_stage(self, stage: int, feats, rois: Tensor) -> Tuple[Tensor, Tensor]:
        roi_head = self.model.roi_head
        if self.cascade:
            extractor, head = roi_head.bbox_roi_extractor[stage], roi_head.bbox_head[stage]
        else:
            extractor, head = roi_head.bbox_roi_extractor, roi_head.bbox_head
        return head(multi_level_roi_align(feats, rois, extractor))

    def classify(self, feats, proposals: Tensor, roi_shapes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per RoI: logits [B*P, C+1] (averaged over cascade stages), deltas [B*P, 4 or 4C] of the last stage,
        and the boxes [B*P, 4] the last stage refined (clipped to ``roi_shapes`` [B*P, 2])."""
        roi_head = self.model.roi_head
        rois = self.rois(proposals)
        num_stages = roi_head.num_stages if self.cascade else 1
        stage_logits = []
        for stage in range(num_stages):
            logits, deltas = self.bbox_stage(stage, feats, rois)
            stage_logits.append(logits)
            if stage < num_stages - 1:  # CascadeRoIHead._refine_roi -> bbox_head.regress_by_class
                head = roi_head.bbox_head[stage]
                labels = logits[:, :-1].argmax(dim=1)
                refined = decode_boxes(head.bbox_coder, rois[:, 1:], self.class_deltas(head, deltas, labels),
                                       roi_shapes)
                rois = torch.cat([rois[:, :1], refined], dim=1)
        # mmdet: sum([score for each stage]) / float(num_stages), in that order
        logits = stage_logits[0]
        for more in stage_logits[1:]:
            logits = logits + more
        if num_stages > 1:
            logits = logits / float(num_stages)
        return logits, deltas, rois[:, 1:]

    @staticmethod
    def class_deltas(head, deltas: Tensor, labels: Tensor) -> Tensor:
        if head.reg_class_agnostic:
            return deltas
        index = (labels * 4)[:, None] + torch.arange(4, device=labels.device)
        return torch.gather(deltas, 1, index)

    def detect(self, logits, deltas, rois, proposal_valid, roi_shapes):
        head = self.model.roi_head.bbox_head[-1] if self.cascade else self.model.roi_head.bbox_head
        batch, num_rois = proposal_valid.shape
        scores = logits.softmax(-1)
        boxes = decode_boxes(head.bbox_coder, rois, deltas, roi_shapes)  # [B*P, 4C] or [B*P, 4]
        num_classes = scores.shape[1] - 1
        boxes = boxes.reshape(batch, num_rois, -1, 4).expand(batch, num_rois, num_classes, 4)
        scores = scores[:, :-1].reshape(batch, num_rois, num_classes)
        labels = torch.arange(num_classes, device=scores.device).repeat(num_rois)
        score_thr = float(self.rcnn_cfg.get('score_thr', 0))
        per_image = []
        for i in range(batch):  # multiclass_nms over every (RoI, class) pair above score_thr
            image_boxes, image_scores = boxes[i].reshape(-1, 4), scores[i].reshape(-1)
            valid = (image_scores > score_thr) & proposal_valid[i].repeat_interleave(num_classes)
            index, kept = nms_topk(image_boxes, image_scores, valid, labels, self.rcnn_iou, self.max_dets,
                                   num_groups=num_classes)
            per_image.append(self.detections(image_boxes, image_scores, labels, index, kept))
        return self.stack(per_image)

    def masks(self, feats, dets: Tensor, labels: Tensor, paste_shape: Tuple[int, int]) -> Tensor:
        roi_head = self.model.roi_head
        rois = self.rois(dets[..., :4])
        num_stages = roi_head.num_stages if self.cascade else 1
        probabilities = []
        for stage in range(num_stages):
            if self.cascade:
                extractor, head = roi_head.mask_roi_extractor[stage], roi_head.mask_head[stage]
            else:
                extractor, head = roi_head.mask_roi_extractor, roi_head.mask_head
            if getattr(roi_head, 'share_roi_extractor', False):
                extractor = roi_head.bbox_roi_extractor[stage] if self.cascade else roi_head.bbox_roi_extractor
            probabilities.append(head(multi_level_roi_align(feats, rois, extractor)).sigmoid())
        # merge_aug_masks: the mean over stages
        masks = probabilities[0] if num_stages == 1 else torch.stack(probabilities).mean(dim=0)
        head = roi_head.mask_head[-1] if self.cascade else roi_head.mask_head
        flat_labels = labels.reshape(-1).clamp(min=0)
        if head.class_agnostic:
            flat_labels = torch.zeros_like(flat_labels)
        masks = masks[torch.arange(masks.shape[0], device=masks.device), flat_labels]  # [B*K, 28, 28]
        if self.paste_masks:
            masks = paste_masks(masks, dets[..., :4].reshape(-1, 4), *paste_shape)
        masks = masks.reshape(dets.shape[0], dets.shape[1], *masks.shape[-2:])
        return _pad_rows(masks.flatten(0, 1), (labels >= 0).reshape(-1), 0.0).reshape(masks.shape)

    def forward(self, images: Tensor, image_shapes: Optional[Tensor] = None):
        image_shapes = image_shapes_or_default(images, image_shapes, self.image_size)
        feats = self.model.extract_feat(images)
        proposals, proposal_valid = self.proposals(feats, image_shapes)
        roi_shapes = image_shapes[:, None].expand(-1, proposals.shape[1], -1).reshape(-1, 2)  # [B*P, 2]
        logits, deltas, rois = self.classify(feats, proposals, roi_shapes)
        dets, labels, num_dets = self.detect(logits, deltas, rois, proposal_valid, roi_shapes)
        if not self.with_mask:
            return dets, labels, num_dets
        return dets, labels, num_dets, self.masks(feats, dets, labels, self.paste_shape(images))


@register_wrapper('RetinaNet')
def build_retinanet(model, cfg, *, score_thr=None, max_dets=None, paste_masks=False, image_size=None):
    return RetinaNetWrapper(model, image_size, score_thr, max_dets)


@register_wrapper('MaskRCNN', 'FasterRCNN', 'CascadeRCNN')
def build_two_stage(model, cfg, *, score_thr=None, max_dets=None, paste_masks=False, image_size=None):
    return TwoStageWrapper(model, image_size, score_thr, max_dets, paste_masks)
