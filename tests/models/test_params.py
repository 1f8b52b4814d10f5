"""Parameter counts of the classic archs against the official figures (classifiers: docs/recipes.md, "Published
results"). Florence-2 towers: tests/models/test_florence2.py."""
import pytest
import torch

from mmdavit.models import DaViT

# arch: (classification model incl. official head, official detection/segmentation backbone)
OFFICIAL = {'tiny': (28_360_168, 27_592_512), 'small': (49_745_896, 48_978_240), 'base': (87_954_408, 86_931_200)}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('arch', OFFICIAL)
def test_param_counts(arch):
    cls_count, det_count = OFFICIAL[arch]
    backbone = DaViT(arch=arch)
    assert count(backbone) == det_count
    # Classification model: no per-stage norms, plus the official head: LayerNorm(8C) and Linear(8C, 1000).
    last = DaViT(arch=arch, out_indices=(3, ))
    top_dims = backbone.embed_dims[-1]
    assert count(last) - 2 * top_dims + 2 * top_dims + top_dims * 1000 + 1000 == cls_count


@pytest.mark.parametrize('arch,dims,depths', [('l', 192, (1, 1, 9, 1)), ('h', 256, (1, 1, 9, 1)),
                                              ('g', 384, (1, 1, 12, 3))])
def test_large_archs_build_with_window_12(arch, dims, depths):
    with torch.device('meta'):  # giant has ~1.4B parameters: shapes only
        model = DaViT(arch=arch)
    assert model.embed_dims == [dims, 2 * dims, 4 * dims, 8 * dims]
    assert model.depths == depths
    assert model.stages[0].blocks[0].spatial.attn.window_size == 12
