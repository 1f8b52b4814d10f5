"""tools/analysis/get_flops.py against a hand count of the DaViT backbone and the official figures."""
import math
from typing import Sequence, Tuple

import pytest
import torch

from mmdavit.models import DaViT
from mmdavit.models.davit import WindowAttention
from tests.tools.common import REPO, load_tool

get_flops = load_tool('analysis/get_flops.py')
LN = 5  # mmengine (like fvcore) counts an affine LayerNorm as 5 FLOPs per element


def hand_count(shape: Tuple[int, int], embed_dims: int = 96, depths: Sequence[int] = (1, 1, 3, 1),
               num_heads: Sequence[int] = (3, 6, 12, 24), window: int = 7,
               out_indices: Sequence[int] = (0, 1, 2, 3)) -> int:
    """Multiply-adds of the DaViT backbone on one image, counted layer by layer (MLP ratio 4)."""
    height, width = math.ceil(shape[0] / 4), math.ceil(shape[1] / 4)
    dims = embed_dims
    macs = height * width * dims * 3 * 7 * 7 + LN * height * width * dims  # stem conv + norm
    for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
        if stage:
            macs += LN * height * width * dims  # downsample norm, on the previous stage's tokens
            height, width, dims = math.ceil(height / 2), math.ceil(width / 2), dims * 2
            macs += height * width * dims * (dims // 2) * 2 * 2  # 2x2 stride-2 conv
        tokens = height * width
        padded = math.ceil(height / window) * window * math.ceil(width / window) * window
        for _ in range(2 * depth):  # spatial and channel blocks alike: cpe, norm, attention, cpe, norm, mlp
            macs += 2 * tokens * dims * 9 + 2 * LN * tokens * dims + 2 * tokens * dims * 4 * dims
        for _ in range(depth):
            # spatial: qkv and proj on the window-padded tokens; q k^T and attn v within each window
            macs += padded * dims * 4 * dims + 2 * padded * window * window * dims
            # channel: qkv and proj; k^T v and attn q within each group of dims / heads channels
            macs += tokens * dims * 4 * dims + 2 * tokens * dims * (dims // heads)
        if stage in out_indices:
            macs += LN * tokens * dims
    return macs


# Exact for the plain q/k/v matmul decomposition of channel attention. The tolerance admits algebraically
# equal rewrites of it (folding the maps into proj's weight moves the count by under 0.3% at these shapes)
# but not a missed op: the smallest, the window attention's two matmuls, is 1.5% of the backbone.
REL = 5e-3


def test_window_attention_counts_both_matmuls_on_padded_windows():
    attn = WindowAttention(dims=96, num_heads=3, window_size=7)
    padded = 21 * 28  # 20 x 27 tokens, padded to window multiples
    expected = padded * 96 * 4 * 96 + 2 * padded * 49 * 96  # qkv + proj, q k^T + attn v
    assert get_flops.count_flops(attn, (torch.rand(1, 20, 27, 96), )) == expected


@pytest.mark.parametrize('shape', [(224, 224), (256, 320)])
def test_backbone_flops_match_hand_count(shape):
    model = DaViT('tiny').eval()
    flops = get_flops.count_flops(model, (torch.rand(1, 3, *shape), ))
    assert flops == pytest.approx(hand_count(shape), rel=REL)


def test_classifier_matches_official_count():
    # The official repository's figures for DaViT-T at 224x224 (about 4.5 GMACs, as the paper says).
    row = get_flops.measure(str(REPO / 'configs/classification/davit_t_in1k.py'))
    assert (row.shape, row.params) == ((224, 224), 28_360_168)
    assert row.flops == pytest.approx(4_540_244_736, rel=REL)


@pytest.mark.parametrize('config, out_indices', [('detection/retinanet_davit_t.py', (1, 2, 3)),
                                                 ('segmentation/upernet_davit_t.py', (0, 1, 2, 3))])
def test_dense_model_counts_its_backbone_like_the_hand_count(config, out_indices):
    shape = (256, 320)
    row = get_flops.measure(str(REPO / 'configs' / config), shape)
    assert row.shape == shape
    assert row.backbone_flops == pytest.approx(hand_count(shape, out_indices=out_indices), rel=REL)
    assert row.flops > 1.2 * row.backbone_flops  # neck and heads come on top
    backbone_params = sum(p.numel() for p in DaViT('tiny', out_indices=out_indices).parameters())
    assert row.params > backbone_params


def test_cli_prints_the_row_and_the_mac_convention(capsys):
    get_flops.main([str(REPO / 'configs/segmentation/upernet_davit_t.py'), '--shape', '64'])
    out = capsys.readouterr().out
    assert '| upernet_davit_t | 64x64 |' in out and '| 60 | 940 |' in out
    assert 'multiply-adds' in out
    with pytest.raises(SystemExit):
        get_flops.main([])  # neither CONFIG nor --all


def test_cli_leaves_the_paper_columns_empty_for_a_changed_model(capsys):
    get_flops.main([str(REPO / 'configs/segmentation/upernet_davit_t.py'), '--shape', '64',
                    '--cfg-options', 'model.backbone.arch=florence2-base',
                    'model.decode_head.in_channels=[128,256,512,1024]', 'model.auxiliary_head.in_channels=512'])
    row = next(line for line in capsys.readouterr().out.splitlines() if 'upernet_davit_t' in line)
    assert row.startswith('| upernet_davit_t (--cfg-options) | 64x64 |') and row.endswith('| - | - |')


@pytest.mark.parametrize('config, paper', [('maskrcnn_davit_t_3x', '| 47.8 | 263 |'),
                                           ('retinanet_davit_b_3x', '| 98.5 | 471 |'),
                                           ('upernet_davit_s', '| 81 | 1030 |'),
                                           ('davit_t_in1k', '| 28.3 | 4.5 |'), ('davit_b_in1k', '| 87.9 | 15.5 |'),
                                           ('my_own_config', '| - | - |')])
def test_table_fills_the_paper_columns(config, paper):
    # 3x schedules train the 1x models; the classifiers' figures are the official repository's.
    row = get_flops.Complexity(config, (224, 224), params=1, flops=1, backbone_flops=1)
    assert get_flops.format_table([row]).splitlines()[-1].endswith(paper)
