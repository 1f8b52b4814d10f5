"""Checkpoint conversion from official, timm and mmpretrain formats, loading and its errors."""
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdavit.models import DaViT, convert_state_dict, detect_format, load_pretrained
from tests.models.reference import perturb_, timm_davit, timm_to_official

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(embed_dims=96, depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24))
HEAD_KEYS = ['head.fc.bias', 'head.fc.weight', 'head.norm.bias', 'head.norm.weight']


@pytest.fixture(scope='module')
def timm_state():
    return timm_davit(**TINY).state_dict()


def test_official_classification_converts_like_timm(timm_state):
    official = timm_to_official(timm_state)
    assert detect_format(official) == 'official'
    from_official, _ = convert_state_dict(official)
    from_timm, _ = convert_state_dict(timm_state)
    # The classifier's own norm/head keep their names (official 'norms'/'head'), so loading reports them.
    backbone_keys = set(from_timm) - set(HEAD_KEYS)
    assert backbone_keys == set(from_official) - {'norms.weight', 'norms.bias', 'head.weight', 'head.bias'}
    for key in backbone_keys:
        assert torch.equal(from_official[key], from_timm[key]), key


def test_official_detection_checkpoint_loads_with_zero_missing(tmp_path, timm_state):
    model = perturb_(DaViT(arch='tiny'))
    official = timm_to_official(timm_state)
    detection = {f'backbone.{k}': v for k, v in official.items() if not k.startswith(('norms.', 'head.'))}
    detection.update({f'backbone.{k}': v for k, v in model.state_dict().items() if k.startswith('norm')})
    detection['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 96, 1, 1)
    path = tmp_path / 'mask_rcnn_davit_official.pth'
    torch.save({'state_dict': detection, 'meta': {'epoch': 12}}, path)

    fresh = DaViT(arch='tiny')
    report = load_pretrained(fresh, str(path))
    assert report.format == 'official'
    assert report.missing == [] and report.unexpected == []
    assert report.outside_prefix == 1
    for key, value in model.state_dict().items():
        if key.startswith('norm'):
            assert torch.equal(fresh.state_dict()[key], value)
    timm_converted, _ = convert_state_dict(timm_state)
    for key, value in fresh.state_dict().items():
        if not key.startswith('norm'):
            assert torch.equal(value, timm_converted[key]), key


def test_mmpretrain_checkpoint_converts_and_blocks_agree(tmp_path):
    from mmpretrain.models.backbones import DaViT as MMPretrainDaViT
    source = perturb_(MMPretrainDaViT(arch='t', out_indices=(0, 1, 2, 3)))
    source.eval()  # mmpretrain's train() returns None, so no chaining
    path = tmp_path / 'mmpretrain.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()},
                'meta': {}}, path)
    ours = DaViT(arch='tiny').eval()
    report = load_pretrained(ours, str(path))
    assert report.format == 'mmpretrain'
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(source.state_dict())
    # Whole-model outputs differ by design (mmpretrain pads the stem symmetrically), so check the
    # converted weights where both compute the same thing: a dual block and a downsample.
    tokens = torch.randn(2, 14, 28, 192)
    with torch.no_grad():
        expected, _ = source.stages[1].blocks[0](tokens.flatten(1, 2), (14, 28)), None
        actual = ours.stages[1].blocks[0](tokens)
        torch.testing.assert_close(actual.flatten(1, 2), expected, atol=1e-4, rtol=1e-4)
        expected_down, shape = source.stages[1].downsample(tokens.flatten(1, 2), (14, 28))
        actual_down = ours.stages[2].downsample(tokens)
    assert tuple(shape) == (7, 14)
    torch.testing.assert_close(actual_down.flatten(1, 2), expected_down, atol=1e-4, rtol=1e-4)


def test_timm_checkpoint_via_init_cfg_reports_head_keys(tmp_path, timm_state, log_records):
    path = tmp_path / 'davit_tiny.pth'
    torch.save(timm_state, path)
    model = DaViT(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    converted, _ = convert_state_dict(timm_state)
    assert torch.equal(model.stages[2].blocks[1].channel.attn.qkv.weight,
                       converted['stages.2.blocks.1.channel.attn.qkv.weight'])
    warnings = '\n'.join(r.getMessage() for r in log_records if r.levelno >= logging.WARNING)
    for key in ('norm0.weight', 'norm3.bias'):
        assert key in warnings  # the classifier checkpoint has no per-stage output norms
    for key in HEAD_KEYS:
        assert key in warnings


def test_missing_file_error():
    model = DaViT(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint='checkpoints/nope.pth'))
    with pytest.raises(FileNotFoundError) as info:
        model.init_weights()
    assert 'checkpoints/nope.pth' in str(info.value)
    assert 'model.backbone.init_cfg=None' in str(info.value)


def test_truncated_file_error(tmp_path, timm_state):
    path = tmp_path / 'full.pth'
    torch.save(timm_state, path)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match='Could not read .*truncated.pth as a torch checkpoint'):
        load_pretrained(DaViT(arch='tiny'), str(truncated))
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    with pytest.raises(ValueError, match='Could not read'):
        load_pretrained(DaViT(arch='tiny'), str(text))


def test_unknown_format_lists_keys(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(1), 'layer1.0.bn1.weight': torch.zeros(1)}, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(DaViT(arch='tiny'), str(path))
    assert 'Unrecognised checkpoint format' in str(info.value)
    assert 'conv1.weight, layer1.0.bn1.weight' in str(info.value)


def test_shape_mismatch_names_key_and_shapes(tmp_path, timm_state):
    path = tmp_path / 'tiny.pth'
    torch.save(timm_state, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(DaViT(arch='base'), str(path))
    assert 'Shape mismatch for stem.conv.weight: checkpoint (96, 3, 7, 7) vs model (128, 3, 7, 7)' in str(info.value)


def test_converter_cli(tmp_path, timm_state):
    src, dst = tmp_path / 'timm.pth', tmp_path / 'ours.pth'
    torch.save({'state_dict': timm_to_official(timm_state)}, src)
    result = subprocess.run([sys.executable, str(ROOT / 'tools/model_converters/davit2mmdavit.py'), str(src),
                             str(dst), '--format', 'official'], capture_output=True, text=True, check=True)
    assert 'official' in result.stdout and 'norms.weight' in result.stdout
    saved = torch.load(dst, weights_only=True)
    assert detect_format(saved['state_dict']) == 'mmdavit'
    model = DaViT(arch='tiny', out_indices=(3, ))
    missing, unexpected = model.load_state_dict(saved['state_dict'], strict=False)
    assert missing == ['norm3.weight', 'norm3.bias']
    assert sorted(unexpected) == ['head.bias', 'head.weight', 'norms.bias', 'norms.weight']
    bad = subprocess.run([sys.executable, str(ROOT / 'tools/model_converters/davit2mmdavit.py'), str(src),
                          str(dst), '--format', 'mmpretrain'], capture_output=True, text=True)
    assert bad.returncode != 0 and 'no tensor' in bad.stderr.lower()
