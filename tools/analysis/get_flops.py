#!/usr/bin/env python
"""Parameters and FLOPs of a DaViT config at the paper's input size, next to the paper's numbers.

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]
    python tools/analysis/get_flops.py --all    # the nine T/S/B Mask R-CNN, RetinaNet and UperNet configs,
                                                # then Cascade Mask R-CNN, DINO and Mask2Former (HEAD_CONFIGS)

Default inputs as in the paper: 1280x800 for detection (``--shape 800 1280``), 2048x512 for segmentation
(``--shape 512 2048``), 224x224 for classification. The method is that of mmdet's and mmseg's
``tools/analysis_tools/get_flops.py``: build the model from the config (backbone ``init_cfg=None``; weights do
not change the count), put a fake batch through its data preprocessor and trace ``model.forward`` in tensor
mode with mmengine's analysis tools. Detectors run backbone, neck, RPN proposals and RoI heads on them
(Mask R-CNN's mask head on the first 100, as mmdet's tensor mode does); segmentors run backbone and decode
head (the auxiliary head is training-only); classifiers produce logits. Parameters are the whole model's
(auxiliary head included), as a checkpoint holds them.

Two departures from upstream, both about counting:
* mmengine's counter has no rule for fused ``scaled_dot_product_attention`` (our window attention) nor for
  ``baddbmm``, and would count them as 0 while explicit matmuls do count. We count them as their matmuls.
  With that, the DaViT-T/S/B classifiers at 224x224 give the official repository's 4,540,244,736 /
  8,800,488,192 / 15,510,430,720 (exactly, with the plain q/k/v matmul decomposition of channel attention).
* ``FlopAnalyzer`` + ``parameter_count`` directly (what ``get_model_complexity_info`` wraps), because that
  wrapper takes no extra op rule and traces the model a second time for activation counts.
Like fvcore, mmengine counts one multiply-add as one FLOP: "GFLOPs" below are GMACs, as in the paper.
Our dense-prediction counts come out 1-2% above the paper's (Mask R-CNN T 265.7 vs 263). The difference is the
attention matmuls (window and channel; 2.5 / 4.1 / 5.5 G for T / S / B at 1280x800): without them every row is
within about 1 G of the paper's, so the paper's counter (mmcv 1.x's module hooks, as Swin's) did not see them.
The "backbone" column is the backbone's share of the FLOPs.
"""
import argparse
import importlib
import inspect
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SHAPE = {'mmdet': (800, 1280), 'mmseg': (512, 2048), 'mmpretrain': (224, 224)}
# Paper / official README: (params in M, GFLOPs) at 1280x800 (detection) or 2048x512 (segmentation).
PAPER = {
    'maskrcnn_davit_t': (47.8, 263), 'maskrcnn_davit_s': (69.2, 351), 'maskrcnn_davit_b': (107.3, 491),
    'retinanet_davit_t': (38.5, 244), 'retinanet_davit_s': (59.9, 332), 'retinanet_davit_b': (98.5, 471),
    'upernet_davit_t': (60, 940), 'upernet_davit_s': (81, 1030), 'upernet_davit_b': (121, 1175),
}
PAPER_CONFIGS = [f'configs/{"segmentation" if name.startswith("upernet") else "detection"}/{name}.py'
                 for name in PAPER]
# The official classifiers at 224x224 (official README: 28.3M / 4.5G, 49.7M / 8.8G, 87.9M / 15.5G).
PAPER_CLASSIFIERS = {'davit_t_in1k': (28.3, 4.5), 'davit_s_in1k': (49.7, 8.8), 'davit_b_in1k': (87.9, 15.5)}
# Heads beyond the paper (no paper figures): the COCO ones at the detection default, Mask2Former on ADE20K at
# its 512x512 crop (as mmseg and the Mask2Former paper report it).
HEAD_CONFIGS = [*(f'configs/detection/{head}_davit_{v}_{schedule}.py' for v in 'tsb' for head, schedule in [
    ('cascade_maskrcnn', '3x'), ('dino_4scale', '12e'), ('mask2former', 'lsj_50e_coco'),
    ('mask2former', 'lsj_50e_coco_panoptic')]), 'configs/detection/dino_5scale_davit_b_12e.py',
    *(f'configs/segmentation/mask2former_davit_{v}_160k_ade20k.py' for v in 'tsb')]
CONFIG_SHAPE = {f'mask2former_davit_{v}_160k_ade20k': (512, 512) for v in 'tsb'}
MACS_NOTE = 'FLOPs counted as multiply-adds (1 MAC = 1 FLOP), as mmengine / fvcore and the paper do.'


class Complexity(NamedTuple):
    config: str
    shape: Tuple[int, int]  # (H, W) after the data preprocessor's padding
    params: int
    flops: int
    backbone_flops: int


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``scaled_dot_product_attention(q, k, v)``: ``q @ k^T`` plus ``attn @ v``, in multiply-adds."""
    q_shape, k_shape, v_shape = (get_shape(x) for x in inputs[:3])
    return math.prod(q_shape[:-2]) * q_shape[-2] * k_shape[-2] * (q_shape[-1] + v_shape[-1])


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(bias, b1, b2)``: the batched matmul ``b1 @ b2``, in multiply-adds (the add is free, as in
    mmengine's ``addmm`` rule). mmengine has no rule for it and would count 0."""
    return math.prod(get_shape(inputs[1])) * get_shape(inputs[2])[-1]


def flops_by_module(model: torch.nn.Module, inputs: Tuple[Any, ...]) -> Dict[str, int]:
    """Multiply-adds of ``model(*inputs)`` per submodule name (``''``: the whole model), from mmengine's
    FlopAnalyzer plus the two rules above."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_flop_jit, 'aten::baddbmm', baddbmm_flop_jit)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():  # the trace runs here
        return dict(analyzer.by_module())


def count_flops(model: torch.nn.Module, inputs: Tuple[Any, ...]) -> int:
    """Multiply-adds of ``model(*inputs)``."""
    return flops_by_module(model, inputs)['']


def count_params(model: torch.nn.Module) -> int:
    return parameter_count(model)['']


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('default_scope') not in DEFAULT_SHAPE:
        raise SystemExit(f'error: {path} has default_scope={cfg.get("default_scope")!r}; get_flops handles '
                         f'{", ".join(DEFAULT_SHAPE)} configs')
    return cfg


def build_model(cfg: Config) -> torch.nn.Module:
    """The config's model in eval mode, randomly initialised (no pretrained weights are read)."""
    scope = cfg.default_scope
    init_default_scope(scope)
    cfg.model.backbone.init_cfg = None
    models = importlib.import_module(f'{scope}.registry').MODELS
    return revert_sync_batchnorm(models.build(cfg.model)).eval()


def fake_batch(scope: str, shape: Tuple[int, int]) -> Dict[str, list]:
    """One random uint8 image of ``shape`` with the metainfo the package's tensor-mode forward reads."""
    height, width = shape
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1.0, 1.0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    elif scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmpretrain.structures import DataSample as Sample
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    return dict(inputs=[image], data_samples=[Sample(metainfo=meta)])


def measure(config: str, shape: Optional[Sequence[int]] = None, cfg_options: Optional[dict] = None) -> Complexity:
    """Params and FLOPs of ``config``'s model on one ``shape`` (H, W) image (default: the paper's)."""
    cfg = load_config(config, cfg_options)
    shape = tuple(shape) if shape else CONFIG_SHAPE.get(Path(config).stem, DEFAULT_SHAPE[cfg.default_scope])
    model = build_model(cfg)
    params = count_params(model)
    with torch.no_grad():
        data = model.data_preprocessor(fake_batch(cfg.default_scope, shape), False)
    # Tensor mode (the forward's default) with the samples bound: the traced call takes the images only.
    model.forward = partial(model.forward, data_samples=data['data_samples'])
    # mmseg's Mask2FormerHead wants the samples in tensor mode too, which EncoderDecoder._forward does not pass
    head = getattr(model, 'decode_head', None)
    if head is not None and 'batch_data_samples' in inspect.signature(head.forward).parameters:
        head.forward = partial(head.forward, batch_data_samples=data['data_samples'])
    flops = flops_by_module(model, (data['inputs'], ))
    # A model changed by --cfg-options is no longer the paper's: its row must not show the paper's figures.
    label = Path(config).stem + (' (--cfg-options)' if cfg_options else '')
    return Complexity(label, tuple(data['inputs'].shape[-2:]), params, flops[''], flops['backbone'])


def paper_figures(config: str) -> Tuple[Any, Any]:
    """The paper's (params in M, GFLOPs) for a config name, or ('-', '-'). A 3x schedule trains the same model
    as the 1x one (the paper quotes the figures once)."""
    name = config[:-len('_3x')] if config.endswith('_3x') else config
    return {**PAPER, **PAPER_CLASSIFIERS}.get(name, ('-', '-'))


def format_table(rows: List[Complexity]) -> str:
    lines = ['| config | input (WxH) | params (M) | FLOPs (G) | backbone FLOPs (G) | paper params (M) '
             '| paper FLOPs (G) |', '|---|---|---|---|---|---|---|']
    for row in rows:
        paper_params, paper_flops = paper_figures(row.config)
        lines.append(f'| {row.config} | {row.shape[1]}x{row.shape[0]} | {row.params / 1e6:.1f} | '
                     f'{row.flops / 1e9:.1f} | {row.backbone_flops / 1e9:.1f} | {paper_params} | {paper_flops} |')
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', help='model config (omit with --all)')
    parser.add_argument('--all', action='store_true',
                        help='the nine T/S/B paper configs, then HEAD_CONFIGS (takes long on CPU)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H W',
                        help='input height and width (one number: square); default: the paper\'s')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    args = parser.parse_args(argv)
    if bool(args.config) == args.all:
        parser.error('give either a CONFIG or --all')
    if args.shape and len(args.shape) not in (1, 2):
        parser.error(f'--shape takes H W (or one number for a square), got {len(args.shape)} numbers')
    if args.shape and len(args.shape) == 1:
        args.shape = args.shape * 2
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    configs = [str(REPO / path) for path in PAPER_CONFIGS + HEAD_CONFIGS] if args.all else [args.config]
    rows = []
    for config in configs:
        rows.append(measure(config, args.shape, args.cfg_options))
        if args.all:
            print(f'measured {rows[-1].config}', file=sys.stderr, flush=True)
    print(format_table(rows))
    print(MACS_NOTE)
    return 0


if __name__ == '__main__':
    sys.exit(main())
