"""Hostile inputs: each is a clear error at the boundary, or a documented behaviour, never a crash deep inside.

Where each case of the reliability checklist is tested:

==========================================  =====================================================================
wrong channel count, 3-D tensor, empty      tests/models/test_backbone.py::test_bad_input_errors
batch (and an empty height / width)
wrong input dtype (fp16 / bf16 / uint8 into  here (an error naming both dtypes and the fixes; autocast and a model cast
an fp32 backbone)                           to the input's dtype still run)
out_indices / frozen_stages out of range,   tests/models/test_backbone.py::test_bad_config_errors
unknown arch, window_size <= 0
truncated or non-checkpoint file            tests/models/test_checkpoints.py::test_truncated_file_error (backbone
                                            init_cfg); tests/reliability/test_resume.py::
                                            test_unreadable_or_foreign_checkpoints_fail_clearly (load_from, resume)
checkpoint of another model                 here (backbone init_cfg); test_resume.py (load_from, resume);
                                            tests/models/test_checkpoints.py::test_unknown_format_lists_keys
config whose dataset path is missing        tests/configs/test_missing_inputs.py
NaN / inf input                             here (documented behaviour)
input sizes 1..300 x 1..300                 here (hypothesis: shapes; equality with timm on small sizes)
==========================================  =====================================================================
"""
import logging
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mmdavit.models import DaViT, load_pretrained
from tests.models.reference import perturb_, timm_davit
from tests.models.test_equivalence import TOLERANCE, build_pair, reference_features

# Narrow but complete: every stage, window padding, channel attention. Built once per module (read-only).
NARROW = dict(embed_dims=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
# Hypothesis caches what it reads from our sources in ./.hypothesis, from collection on: not in the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / 'mmdavit-hypothesis')
# Deterministic examples, and no example database.
PROPERTY = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope='module')
def narrow_model():
    return perturb_(DaViT(NARROW, drop_path_rate=0.0)).eval()


@pytest.fixture(scope='module')
def narrow_pair():
    return build_pair(dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)))


def test_nan_and_inf_input_poison_only_their_sample():
    """Documented behaviour: the backbone does not check values (a check would cost a device sync per
    forward). A NaN or inf anywhere in an image turns that image's features into NaN at every stage, through
    channel attention, which mixes all positions; other images of the batch are unaffected. In training the
    loss becomes NaN and is logged as such."""
    model = perturb_(DaViT('tiny', drop_path_rate=0.0)).eval()
    images = torch.randn(3, 3, 64, 80)
    images[0, 1, 10, 20] = float('nan')
    images[2, 0, 0, 0] = float('inf')
    with torch.no_grad():
        clean = model(images[1:2])
        feats = model(images)
    for stage, (feat, expected) in enumerate(zip(feats, clean)):
        assert torch.isnan(feat[0]).all() and torch.isnan(feat[2]).all(), f'stage {stage}'
        torch.testing.assert_close(feat[1:2], expected, msg=f'stage {stage}: the clean image changed')


@settings(max_examples=40, **PROPERTY)
@given(height=st.integers(1, 300), width=st.integers(1, 300))
@example(height=1, width=1)
@example(height=300, width=300)
@example(height=1, width=300)
@example(height=29, width=227)  # 29 -> 8 -> 4 -> 2 -> 1 tokens: one padded window per stage
def test_output_shapes_follow_ceil_formula(narrow_model, height, width):
    with torch.no_grad():
        feats = narrow_model(torch.randn(1, 3, height, width))
    assert len(feats) == 4
    for stage, feat in enumerate(feats):
        stride = 4 * 2**stage
        expected = (1, NARROW['embed_dims'] * 2**stage, math.ceil(height / stride), math.ceil(width / stride))
        assert tuple(feat.shape) == expected, f'stage {stage} at {height}x{width}'
        assert torch.isfinite(feat).all()


@settings(max_examples=25, **PROPERTY)
@given(height=st.integers(1, 64), width=st.integers(1, 64), batch=st.integers(1, 2))
@example(height=1, width=1, batch=1)
@example(height=57, width=64, batch=2)  # 15 x 16 tokens: padded windows in both directions
def test_matches_timm_reference_on_small_sizes(narrow_pair, height, width, batch):
    reference, ours = narrow_pair
    images = torch.randn(batch, 3, height, width)
    with torch.no_grad():
        expected = reference_features(reference, ours, images)
        actual = ours(images)
    for stage, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f'stage {stage}'
        diff = (a - e).abs().max().item()
        assert diff <= TOLERANCE, f'stage {stage} at {height}x{width}: max abs diff {diff:.2e}'


def test_checkpoint_of_another_backbone_with_davit_like_keys(tmp_path):
    """mmpretrain's Swin-T shares mmpretrain DaViT's key layout (``patch_embed.projection``, ``stages.i.blocks``),
    so it is detected as an mmpretrain DaViT checkpoint; loading then stops at the first tensor whose shape
    differs, naming it, before anything is copied into the model."""
    from mmpretrain.models.backbones import SwinTransformer
    path = tmp_path / 'swin_tiny.pth'
    torch.save({'state_dict': SwinTransformer(arch='tiny').state_dict()}, path)
    model = DaViT('tiny')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r'Shape mismatch for stem.conv.weight: checkpoint \(96, 3, 4, 4\) vs '
                                         r'model \(96, 3, 7, 7\)'):
        load_pretrained(model, str(path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_checkpoint_of_a_deeper_davit_warns_with_the_extra_blocks(tmp_path, log_records):
    """Documented behaviour: a DaViT-S (1, 1, 9, 1) checkpoint loaded into DaViT-T (1, 1, 3, 1) has the right
    key format and shapes for every tensor DaViT-T has; it loads them and warns, naming the six blocks of
    stage 2 that DaViT-T lacks, rather than failing."""
    path = tmp_path / 'davit_small_timm.pth'
    torch.save(timm_davit(depths=(1, 1, 9, 1)).state_dict(), path)
    report = load_pretrained(DaViT('tiny'), str(path))
    extra_blocks = {'.'.join(k.split('.')[:4]) for k in report.unexpected if k.startswith('stages.')}
    assert extra_blocks == {f'stages.2.blocks.{j}' for j in range(3, 9)}
    warning = '\n'.join(r.getMessage() for r in log_records if r.levelno >= logging.WARNING)
    assert 'unexpected keys in the checkpoint, not loaded' in warning and 'stages.2.blocks.8.channel' in warning


@pytest.mark.parametrize('dtype,message', [
    (torch.uint8, 'DaViT expects floating-point images, got torch.uint8: convert and normalise them first'),
    (torch.float16, 'DaViT got torch.float16 images but its weights are torch.float32: cast the images '
                    '(images.to(torch.float32)), or the model (model.to(torch.float16)), or run under '
                    "torch.autocast('cpu')"),
    (torch.bfloat16, 'DaViT got torch.bfloat16 images but its weights are torch.float32'),
    (torch.float64, 'DaViT got torch.float64 images'),
])
def test_wrong_input_dtype_names_cause_and_fix(narrow_model, dtype, message):
    images = (torch.rand(1, 3, 32, 32) * 255).to(dtype)
    with pytest.raises(TypeError) as info, torch.no_grad():
        narrow_model(images)
    assert message in str(info.value)


@pytest.mark.parametrize('input_dtype', [torch.bfloat16, torch.float32])
def test_autocast_takes_bf16_and_fp32_images(narrow_model, input_dtype):
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        feats = narrow_model(images.to(input_dtype))
    assert all(f.dtype == torch.bfloat16 and torch.isfinite(f).all() for f in feats)


def test_model_cast_to_the_input_dtype_runs():
    model = perturb_(DaViT(NARROW, drop_path_rate=0.0)).eval().to(torch.bfloat16)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert all(f.dtype == torch.bfloat16 and torch.isfinite(f).all() for f in feats)
