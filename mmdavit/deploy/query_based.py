"""Export wrappers for mmdet's query-based models: DINO (detection) and Mask2Former (COCO instance segmentation).

Each ``forward(images, image_shapes)`` runs the model's own modules (backbone, neck / pixel decoder, transformer,
heads) and re-implements mmdet 3.3's test-time post-processing in batched tensor ops with fixed output sizes:

- DINO (``DETRHead._predict_by_feat_single``): the transformer's padding masks made from ``image_shapes``
  (``DeformableDETR.pre_transformer``); the last decoder layer's sigmoid scores; the ``max_per_img`` best
  (query, class) pairs; label = index % num_classes, box = the query's (cx, cy, w, h) as corners scaled by the
  image's shape and clipped to it. (With a softmax classifier: per query its best class, then the best queries.)
- Mask2Former instance (``MaskFormerFusionHead.instance_postprocess``): masks upsampled to the input and cropped
  to the image (outside its shape: logit -inf, i.e. not in the mask); softmax class scores without
  "no object"; the ``max_per_image`` best (query, class) pairs; things only; score = class score x the mean
  sigmoid inside the binary mask (logit > 0); box = the binary mask's extent (``mask2bbox``, 0 for an empty
  mask).

Outputs: ``dets`` [B, K, 5] (x1, y1, x2, y2, score in the network-input frame), ``labels`` [B, K] int64,
``num_dets`` [B] int64, valid rows first by descending score, padding rows with score 0 and label -1;
Mask2Former adds ``masks`` [B, K, h, w]: sigmoid mask probabilities at the exported image size (h, w) =
``image_size`` (the input size when None; 0 outside each image's shape), mmdet's binary mask being
``masks > 0.5``; 0 on padding rows. K = ``max_dets`` (the config's ``max_per_img`` / ``max_per_image`` when
None). mmdet applies no score threshold here; ``score_thr``
(None: 0) turns rows at or below it into padding.

Deformable attention: mmcv's ``MultiScaleDeformableAttention`` calls its CUDA kernel only for CUDA tensors; on
the CPU, where the export runs, it takes the pure-PyTorch path (``F.grid_sample``, the standard ``GridSample``
op, opset >= 16). :func:`static_deformable_attention` makes sure of it and, while the wrapper runs, gives
that path and the reference-point helpers the feature maps' sizes as Python ints (mmdet reads them from a tensor,
which the dynamo exporter cannot turn back into shapes); the computation is the same.
"""
import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdavit.deploy.export import image_shapes_or_default, register_wrapper

# -- deformable attention with static level sizes ---------------------------------------------------------------


def deformable_attention_sampling(value: Tensor, spatial_shapes: Sequence[Tuple[int, int]], sampling_locations: Tensor,
                                  attention_weights: Tensor) -> Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch`` with the levels' (h, w) as Python ints: the same
    ``grid_sample`` calls (bilinear, zeros padding, align_corners=False) and the same reductions."""
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, embed_dims, h, w)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_list.append(
            F.grid_sample(value_l, grid_l, mode='bilinear', padding_mode='zeros', align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                                  num_levels * num_points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1).view(
        bs, num_heads * embed_dims, num_queries)
    return output.transpose(1, 2).contiguous()


def _static_msda_forward(shapes: List[Tuple[int, int]]):
    """A replacement for ``MultiScaleDeformableAttention.forward`` (mmcv 2.x, batch_first or not) that samples with
    :func:`deformable_attention_sampling` at ``shapes``; otherwise line for line mmcv's."""

    def forward(self, query, key=None, value=None, identity=None, query_pos=None, key_padding_mask=None,
                reference_points=None, spatial_shapes=None, level_start_index=None, **kwargs):
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)
            value = value.permute(1, 0, 2)
        bs, num_query, _ = query.shape
        bs, num_value, _ = value.shape
        if sum(h * w for h, w in shapes) != num_value:
            raise ValueError(f'deformable attention: level sizes {shapes} do not cover the {num_value} values')
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(bs, num_query, self.num_heads, self.num_levels,
                                                             self.num_points, 2)
        attention_weights = self.attention_weights(query).view(bs, num_query, self.num_heads,
                                                               self.num_levels * self.num_points)
        attention_weights = attention_weights.softmax(-1)
        attention_weights = attention_weights.view(bs, num_query, self.num_heads, self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            offset_normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=value.dtype, device=value.device)
            sampling_locations = reference_points[:, :, None, :, None, :] \
                + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            sampling_locations = reference_points[:, :, None, :, None, :2] \
                + sampling_offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError(f'Last dim of reference_points must be 2 or 4, but get {reference_points.shape[-1]}')
        output = deformable_attention_sampling(value, shapes, sampling_locations, attention_weights)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity

    return forward


def _static_pixel_decoder_forward(self, feats: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """mmdet's ``MSDeformAttnPixelDecoder.forward`` with the level sizes as Python ints (mmdet keeps them in a
    tensor and splits / reshapes by its values)."""
    batch_size = feats[0].shape[0]
    encoder_input_list, padding_mask_list, level_positional_encoding_list = [], [], []
    shapes, reference_points_list = [], []
    for i in range(self.num_encoder_levels):
        level_idx = self.num_input_levels - i - 1
        feat = feats[level_idx]
        feat_projected = self.input_convs[i](feat)
        h, w = int(feat.shape[-2]), int(feat.shape[-1])
        # no padding
        padding_mask_resized = feat.new_zeros((batch_size, h, w), dtype=torch.bool)
        pos_embed = self.postional_encoding(padding_mask_resized)
        level_embed = self.level_encoding.weight[i]
        level_pos_embed = level_embed.view(1, -1, 1, 1) + pos_embed
        reference_points = self.point_generator.single_level_grid_priors((h, w), level_idx, device=feat.device)
        factor = feat.new_tensor([[w, h]]) * self.strides[level_idx]
        reference_points = reference_points / factor
        encoder_input_list.append(feat_projected.flatten(2).permute(0, 2, 1))
        padding_mask_list.append(padding_mask_resized.flatten(1))
        level_positional_encoding_list.append(level_pos_embed.flatten(2).permute(0, 2, 1))
        shapes.append((h, w))
        reference_points_list.append(reference_points)
    padding_masks = torch.cat(padding_mask_list, dim=1)
    encoder_inputs = torch.cat(encoder_input_list, dim=1)
    level_positional_encodings = torch.cat(level_positional_encoding_list, dim=1)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=encoder_inputs.device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1, )), spatial_shapes.prod(1).cumsum(0)[:-1]))
    reference_points = torch.cat(reference_points_list, dim=0)
    reference_points = reference_points[None, :, None].repeat(batch_size, 1, self.num_encoder_levels, 1)
    valid_radios = reference_points.new_ones((batch_size, self.num_encoder_levels, 2))
    memory = self.encoder(
        query=encoder_inputs,
        query_pos=level_positional_encodings,
        key_padding_mask=padding_masks,
        spatial_shapes=spatial_shapes,
        reference_points=reference_points,
        level_start_index=level_start_index,
        valid_ratios=valid_radios)
    memory = memory.permute(0, 2, 1)
    outs = torch.split(memory, [h * w for h, w in shapes], dim=-1)
    outs = [x.reshape(batch_size, -1, h, w) for x, (h, w) in zip(outs, shapes)]
    for i in range(self.num_input_levels - self.num_encoder_levels - 1, -1, -1):
        x = feats[i]
        cur_feat = self.lateral_convs[i](x)
        y = cur_feat + F.interpolate(outs[-1], size=cur_feat.shape[-2:], mode='bilinear', align_corners=False)
        y = self.output_convs[i](y)
        outs.append(y)
    multi_scale_features = outs[:self.num_outs]
    mask_feature = self.mask_feature(outs[-1])
    return mask_feature, multi_scale_features


def encoder_reference_points(shapes: Sequence[Tuple[int, int]], valid_ratios: Tensor, device) -> Tensor:
    """mmdet's ``DeformableDetrTransformerEncoder.get_encoder_reference_points`` at static level sizes."""
    reference_points_list = []
    for lvl, (h, w) in enumerate(shapes):
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device), indexing='ij')
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        reference_points_list.append(torch.stack((ref_x, ref_y), -1))
    reference_points = torch.cat(reference_points_list, 1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def encoder_output_proposals(memory: Tensor, memory_mask: Optional[Tensor],
                             shapes: Sequence[Tuple[int, int]]) -> Tuple[Tensor, Tensor]:
    """mmdet's ``DeformableDETR.gen_encoder_output_proposals`` at static level sizes, up to the detector's
    ``memory_trans_fc`` / ``memory_trans_norm`` (applied by the caller)."""
    bs = memory.size(0)
    proposals = []
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        end = start + h * w
        if memory_mask is not None:
            mask_flatten_ = memory_mask[:, start:end].view(bs, h, w, 1)
            valid_h = torch.sum(~mask_flatten_[:, :, 0, 0], 1).unsqueeze(-1)
            valid_w = torch.sum(~mask_flatten_[:, 0, :, 0], 1).unsqueeze(-1)
            scale = torch.cat([valid_w, valid_h], 1).view(bs, 1, 1, 2)
        else:
            scale = memory.new_tensor([w, h]).view(1, 1, 1, 2)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
            torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device), indexing='ij')
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        grid = (grid.unsqueeze(0).expand(bs, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(bs, -1, 4))
        start = end
    output_proposals = torch.cat(proposals, 1)
    output_proposals_valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).sum(-1, keepdim=True) == 4
    output_proposals = torch.log(output_proposals / (1 - output_proposals))  # inverse_sigmoid, as mmdet
    if memory_mask is not None:
        output_proposals = output_proposals.masked_fill(memory_mask.unsqueeze(-1), float('inf'))
    output_proposals = output_proposals.masked_fill(~output_proposals_valid, float('inf'))
    output_memory = memory
    if memory_mask is not None:
        output_memory = output_memory.masked_fill(memory_mask.unsqueeze(-1), float(0))
    output_memory = output_memory.masked_fill(~output_proposals_valid, float(0))
    return output_memory, output_proposals


@contextlib.contextmanager
def static_deformable_attention(model: nn.Module, shapes: List[Tuple[int, int]]) -> Iterator[None]:
    """Within the block, the model's ``MultiScaleDeformableAttention`` modules sample with the pure-PyTorch
    ``grid_sample`` path at ``shapes`` ((h, w) per level, in the order the model flattens its levels), and its
    Deformable-DETR encoders and two-stage proposal generator (DINO) make their points at those sizes.
    Instance attributes shadow the classes' methods; deleting them on exit leaves the model as it was."""
    from mmcv.ops import MultiScaleDeformableAttention
    from mmdet.models.detectors import DeformableDETR
    from mmdet.models.layers import MSDeformAttnPixelDecoder
    from mmdet.models.layers.transformer import DeformableDetrTransformerEncoder
    patched = []

    def patch(module: nn.Module, name: str, function) -> None:
        setattr(module, name, function)
        patched.append((module, name))

    msda_forward = _static_msda_forward(shapes)
    for module in model.modules():
        if isinstance(module, MSDeformAttnPixelDecoder):
            patch(module, 'forward', _static_pixel_decoder_forward.__get__(module))
        if isinstance(module, MultiScaleDeformableAttention):
            patch(module, 'forward', msda_forward.__get__(module))
        elif isinstance(module, DeformableDetrTransformerEncoder):
            patch(module, 'get_encoder_reference_points',
                  lambda spatial_shapes, valid_ratios, device: encoder_reference_points(shapes, valid_ratios, device))
        if isinstance(module, DeformableDETR):

            def proposals(memory, memory_mask, spatial_shapes, detector=module):
                output_memory, output_proposals = encoder_output_proposals(memory, memory_mask, shapes)
                return detector.memory_trans_norm(detector.memory_trans_fc(output_memory)), output_proposals

            patch(module, 'gen_encoder_output_proposals', proposals)
    try:
        yield
    finally:
        for module, name in patched:
            delattr(module, name)


def padding_mask(image_shapes: Tensor, size: Tuple[int, int]) -> Tensor:
    """[B, h, w] bool, True right of and below each image's (h, w) in ``image_shapes`` [B, 2]."""
    rows = torch.arange(size[0], device=image_shapes.device)[None, :, None]
    columns = torch.arange(size[1], device=image_shapes.device)[None, None, :]
    return (rows >= image_shapes[:, 0, None, None]) | (columns >= image_shapes[:, 1, None, None])


def padded_pre_transformer(detector: nn.Module, feats: Sequence[Tensor], image_shapes: Tensor,
                           input_size: Tuple[int, int]) -> Tuple[dict, dict]:
    """mmdet's ``DeformableDETR.pre_transformer`` with the padding masks made from ``image_shapes`` [B, 2]
    (a graph input) and the level sizes as Python ints. mmdet builds the masks from Python ints, and leaves
    them out while exporting or when every image fills the input; all-zero masks give the same values."""
    masks = padding_mask(image_shapes, input_size).to(feats[0].dtype)  # 1: padding, as mmdet's
    level_masks = [F.interpolate(masks[None], size=feat.shape[-2:]).to(torch.bool).squeeze(0) for feat in feats]
    flat_feats, flat_positions, flat_masks = [], [], []
    for level, (feat, mask) in enumerate(zip(feats, level_masks)):
        position = detector.positional_encoding(mask).flatten(2).permute(0, 2, 1)
        flat_feats.append(feat.flatten(2).permute(0, 2, 1))
        flat_positions.append(position + detector.level_embed[level].view(1, 1, -1))
        flat_masks.append(mask.flatten(1))
    shapes = torch.tensor([tuple(feat.shape[-2:]) for feat in feats], dtype=torch.long, device=feats[0].device)
    level_start_index = torch.cat((shapes.new_zeros((1, )), shapes.prod(1).cumsum(0)[:-1]))
    valid_ratios = torch.stack([detector.get_valid_ratio(mask) for mask in level_masks], 1)
    feat_mask = torch.cat(flat_masks, 1)
    encoder_inputs = dict(feat=torch.cat(flat_feats, 1), feat_mask=feat_mask, feat_pos=torch.cat(flat_positions, 1),
                          spatial_shapes=shapes, level_start_index=level_start_index, valid_ratios=valid_ratios)
    decoder_inputs = dict(memory_mask=feat_mask, spatial_shapes=shapes, level_start_index=level_start_index,
                          valid_ratios=valid_ratios)
    return encoder_inputs, decoder_inputs


def deformable_attention_at(module: nn.Module, feats: Sequence[Tensor]):
    """:func:`static_deformable_attention` for a Mask2Former head (mmdet's or mmseg's) given the backbone / neck
    features it runs on; a no-op context for a module without a deformable pixel decoder (e.g. UperNet)."""
    decoder = getattr(module, 'pixel_decoder', None)
    if decoder is None or not hasattr(decoder, 'num_encoder_levels'):
        return contextlib.nullcontext()
    # the pixel decoder's deformable encoder runs on the coarsest num_encoder_levels maps, coarse first
    shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats][::-1][:decoder.num_encoder_levels]
    return static_deformable_attention(module, shapes)


def _detections(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Rows sorted so far by descending score with the invalid ones anywhere -> valid rows first (by score),
    padding rows (score 0, label -1, box 0) after."""
    ranked = torch.where(valid, scores, scores.new_full((), -1.0))
    _, order = ranked.topk(ranked.shape[1], dim=1)
    boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
    scores, labels, valid = (torch.gather(t, 1, order) for t in (scores, labels, valid))
    dets = torch.cat([boxes, scores[..., None]], dim=-1)
    dets = torch.where(valid[..., None], dets, dets.new_zeros(()))
    labels = torch.where(valid, labels, labels.new_full((), -1))
    return dets, labels, valid.sum(dim=1)


def _data_samples(batch: int, input_size: Tuple[int, int], image_size: Tuple[int, int]):
    from mmdet.structures import DetDataSample
    meta = dict(batch_input_shape=input_size, img_shape=image_size, pad_shape=input_size, ori_shape=image_size,
                scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=dict(meta)) for _ in range(batch)]


class _QueryWrapper(nn.Module):
    task = 'detection'
    input_names = ['images', 'image_shapes']
    output_names = ['dets', 'labels', 'num_dets']

    def __init__(self, model: nn.Module, image_size: Optional[Tuple[int, int]], score_thr: Optional[float]):
        super().__init__()
        self.model = model
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.score_thr = float(score_thr or 0.0)

    def sizes(self, images: Tensor) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        input_size = (int(images.shape[-2]), int(images.shape[-1]))
        image_size = self.image_size or input_size
        if image_size[0] > input_size[0] or image_size[1] > input_size[1]:
            raise ValueError(f'image_size {image_size} is larger than the input {input_size}')
        return input_size, image_size

    def valid(self, scores: Tensor) -> Tensor:
        if self.score_thr > 0:
            return scores > self.score_thr
        return torch.ones_like(scores, dtype=torch.bool)


class DINOWrapper(_QueryWrapper):
    """mmdet ``DINO`` (and other ``DeformableDETR`` descendants with a two-stage DINO head)."""

    def __init__(self, model, image_size=None, score_thr=None, max_dets=None):
        super().__init__(model, image_size, score_thr)
        head = model.bbox_head
        if max_dets is not None:
            head.test_cfg['max_per_img'] = int(max_dets)  # so that model.predict (the reference) agrees
        self.max_dets = int(head.test_cfg.get('max_per_img', model.num_queries))

    def forward(self, images: Tensor, image_shapes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        model = self.model
        input_size, image_size = self.sizes(images)
        image_shapes = image_shapes_or_default(images, image_shapes, image_size)
        samples = _data_samples(int(images.shape[0]), input_size, image_size)
        feats = model.extract_feat(images)
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        with static_deformable_attention(model, shapes):  # base_detr's forward_transformer, step by step
            encoder_inputs, decoder_inputs = padded_pre_transformer(model, feats, image_shapes, input_size)
            decoder_more, head_inputs = model.pre_decoder(**model.forward_encoder(**encoder_inputs),
                                                          batch_data_samples=samples)
            decoder_inputs.update(decoder_more)
            head_inputs.update(model.forward_decoder(**decoder_inputs))
            cls_scores, bbox_preds = model.bbox_head(head_inputs['hidden_states'], head_inputs['references'])
        cls_score, bbox_pred = cls_scores[-1], bbox_preds[-1]  # the last decoder layer: [B, Q, C], [B, Q, 4]
        k = self.max_dets
        if model.bbox_head.loss_cls.use_sigmoid:
            num_classes = model.bbox_head.num_classes
            scores, index = cls_score.sigmoid().flatten(1).topk(k, dim=1)
            labels = index % num_classes
            query = torch.div(index, num_classes, rounding_mode='floor')
        else:
            best, best_labels = F.softmax(cls_score, dim=-1)[..., :-1].max(-1)
            scores, query = best.topk(k, dim=1)
            labels = torch.gather(best_labels, 1, query)
        boxes = torch.gather(bbox_pred, 1, query[..., None].expand(-1, -1, 4))
        cx, cy, w, h = boxes.unbind(-1)  # bbox_cxcywh_to_xyxy, then scaled to each image and clipped to it
        height, width = (image_shapes[:, side, None].to(boxes.dtype) for side in (0, 1))
        corners = [(cx - 0.5 * w) * width, (cy - 0.5 * h) * height, (cx + 0.5 * w) * width, (cy + 0.5 * h) * height]
        limits = [width, height, width, height]
        boxes = torch.stack([torch.minimum(c.clamp(min=0), limit) for c, limit in zip(corners, limits)], dim=-1)
        return _detections(boxes, scores, labels, self.valid(scores))


def mask_boxes(binary: Tensor) -> Tensor:
    """mmdet's ``mask2bbox`` batched: [..., h, w] float 0/1 -> [..., 4] (x1, y1, x2 + 1, y2 + 1 of the
    set pixels), zeros for an empty mask."""
    height, width = binary.shape[-2:]
    columns = binary.amax(dim=-2)  # [..., w]: any pixel set in the column
    rows = binary.amax(dim=-1)  # [..., h]
    xs = torch.arange(width, dtype=binary.dtype, device=binary.device)
    ys = torch.arange(height, dtype=binary.dtype, device=binary.device)
    x1 = torch.where(columns > 0, xs, xs.new_full((), float(width))).amin(dim=-1)
    y1 = torch.where(rows > 0, ys, ys.new_full((), float(height))).amin(dim=-1)
    x2 = (columns * (xs + 1)).amax(dim=-1)
    y2 = (rows * (ys + 1)).amax(dim=-1)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1)
    empty = (columns.amax(dim=-1) <= 0)[..., None]
    return torch.where(empty, boxes.new_zeros(()), boxes)


class Mask2FormerInstanceWrapper(_QueryWrapper):
    """mmdet ``Mask2Former`` (``MaskFormer``) with ``test_cfg.instance_on``: instance segmentation outputs."""
    task = 'instance'
    output_names = ['dets', 'labels', 'num_dets', 'masks']

    def __init__(self, model, image_size=None, score_thr=None, max_dets=None):
        super().__init__(model, image_size, score_thr)
        fusion = model.panoptic_fusion_head
        if not fusion.test_cfg.get('instance_on', False):
            raise NotImplementedError('ONNX export of Mask2Former serves instance segmentation: the config has '
                                      'test_cfg.instance_on=False (panoptic-only outputs are not exported)')
        if max_dets is not None:
            fusion.test_cfg['max_per_image'] = int(max_dets)
        self.max_dets = int(fusion.test_cfg.get('max_per_image', 100))

    def forward(self, images: Tensor, image_shapes: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
        model = self.model
        input_size, image_size = self.sizes(images)
        image_shapes = image_shapes_or_default(images, image_shapes, image_size)
        batch = int(images.shape[0])
        feats = model.extract_feat(images)
        with deformable_attention_at(model.panoptic_head, feats):
            cls_list, mask_list = model.panoptic_head(feats, _data_samples(batch, input_size, image_size))
        mask_cls = cls_list[-1]  # [B, Q, C + 1]
        mask_pred = F.interpolate(mask_list[-1], size=input_size, mode='bilinear', align_corners=False)
        mask_pred = mask_pred[:, :, :image_size[0], :image_size[1]]  # remove padding: each image's own, below
        mask_pred = mask_pred.masked_fill(padding_mask(image_shapes, image_size)[:, None], float('-inf'))
        fusion = model.panoptic_fusion_head
        num_classes = fusion.num_classes
        scores, index = F.softmax(mask_cls, dim=-1)[..., :-1].flatten(1).topk(self.max_dets, dim=1)
        labels = index % num_classes
        query = torch.div(index, num_classes, rounding_mode='floor')
        masks = mask_pred[torch.arange(batch, device=images.device)[:, None], query]  # [B, K, h, w]
        binary = (masks > 0).to(masks.dtype)
        probabilities = masks.sigmoid()
        mask_scores = (probabilities * binary).flatten(2).sum(2) / (binary.flatten(2).sum(2) + 1e-6)
        det_scores = scores * mask_scores
        valid = (labels < fusion.num_things_classes) & self.valid(det_scores)
        dets, det_labels, num_dets = _detections(mask_boxes(binary), det_scores, labels, valid)
        # the masks in the order of the rows
        order = torch.where(valid, det_scores, det_scores.new_full((), -1.0)).topk(det_scores.shape[1], dim=1)[1]
        masks = probabilities[torch.arange(batch, device=images.device)[:, None], order]
        masks = torch.where((det_labels >= 0)[..., None, None], masks, masks.new_zeros(()))
        return dets, det_labels, num_dets, masks


@register_wrapper('DINO')
def build_dino(model, cfg, *, score_thr=None, max_dets=None, paste_masks=False, image_size=None):
    return DINOWrapper(model, image_size, score_thr, max_dets)


@register_wrapper('Mask2Former')
def build_mask2former(model, cfg, *, score_thr=None, max_dets=None, paste_masks=False, image_size=None):
    # Mask2Former's masks are whole-image maps: they are always at the image size (paste_masks has no effect)
    return Mask2FormerInstanceWrapper(model, image_size, score_thr, max_dets)
