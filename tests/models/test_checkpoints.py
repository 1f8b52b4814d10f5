"""Checkpoint files (torch, safetensors, sharded) and formats (official, timm, mmpretrain, Florence-2): conversion,
loading, its report and its errors."""
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmdavit.models import DaViT, convert_state_dict, detect_format, load_pretrained
from tests.conftest import requires_openmmlab
from tests.models.reference import perturb_, timm_davit, timm_davit_fl, timm_to_official
from tests.models.test_equivalence import reference_features

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


@requires_openmmlab
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
    info = '\n'.join(r.getMessage() for r in log_records if r.levelno == logging.INFO)
    # A classifier checkpoint has no per-stage output norms: new layers, said so, not warned about.
    assert 'norm0' not in warnings and 'norm3' not in warnings
    assert 'output norms norm0, norm1, norm2, norm3 freshly initialised' in info
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


# --- Florence-2 formats, safetensors, sharded checkpoints --------------------------------------------------------
# Test checkpoints are written here by renaming a timm state dict to the documented key names of each format
# (Microsoft's Florence-2 VLM and transformers' port), never by our converter.

NARROW = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
OUTPUT_NORMS = sorted(f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
# Sub-layers of a timm block -> Florence-2's names ({attn}: window_attn in spatial, channel_attn in channel blocks).
FLORENCE2_SUBLAYERS = {'cpe1.proj': 'conv1.fn.dw', 'norm1': '{attn}.norm', 'attn': '{attn}.fn',
                       'cpe2.proj': 'conv2.fn.dw', 'norm2': 'ffn.norm', 'mlp': 'ffn.fn.net'}
TRANSFORMERS_SUBLAYERS = {'cpe1.proj': 'conv1', 'norm1': 'norm1', 'attn': '{attn}', 'cpe2.proj': 'conv2',
                          'norm2': 'norm2', 'mlp': 'ffn'}
# What a VLM checkpoint holds besides its vision tower (small stand-ins for the language model).
FLORENCE2_OTHERS = ['image_projection', 'image_proj_norm.weight', 'image_proj_norm.bias',
                    'image_pos_embed.row_embeddings.weight', 'image_pos_embed.column_embeddings.weight',
                    'visual_temporal_embed.pos_idx_to_embed', 'language_model.model.shared.weight',
                    'language_model.model.encoder.layers.0.fc1.weight', 'language_model.lm_head.weight']
TRANSFORMERS_OTHERS = ['model.multi_modal_projector.image_projection.weight',
                       'model.multi_modal_projector.image_proj_norm.weight',
                       'model.language_model.shared.weight', 'model.language_model.encoder.layers.0.fc1.weight',
                       'lm_head.weight']


def timm_to_mmdavit(state: dict) -> dict:
    """A classic timm DaViT state dict under mmdavit's documented names (the blocks of a layer are numbered 0, 1
    in timm, named spatial, channel here; everything else is named alike), the classifier head dropped."""
    block_names = {'0': 'spatial', '1': 'channel'}
    return {re.sub(r'^(stages\.\d+\.blocks\.\d+)\.([01])\.', lambda m: f'{m[1]}.{block_names[m[2]]}.', key): value
            for key, value in state.items() if not key.startswith('head.')}


def timm_to_vlm(state: dict, sublayers: dict, conv: str, prefix: str, others: list) -> dict:
    """A timm DaViT state dict under a Florence-2-style VLM's names: ``{prefix}convs.{s}.{conv}|norm`` and
    ``{prefix}blocks.{s}.{j}.{spatial|channel}_block.*``, plus non-vision tensors; the classifier head dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith('head.'):
            continue
        key = re.sub(r'^stem\.(conv|norm)\.', lambda m: f'convs.0.{conv if m[1] == "conv" else "norm"}.', key)
        key = re.sub(r'^stages\.(\d+)\.downsample\.(conv|norm)\.',
                     lambda m: f'convs.{m[1]}.{conv if m[2] == "conv" else "norm"}.', key)
        block = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.([01]|spatial_block|channel_block)\.(.*)$', key)
        if block:  # classic timm numbers the two blocks of a layer, davit_*_fl names them
            spatial = block[3] in ('0', 'spatial_block')
            kind, attn = ('spatial_block', 'window_attn') if spatial else ('channel_block', 'channel_attn')
            rest = block[4]
            for name, new in sublayers.items():
                if rest.startswith(name + '.'):
                    rest = new.format(attn=attn) + rest[len(name):]
                    break
            key = f'blocks.{block[1]}.{block[2]}.{kind}.{rest}'
        out[prefix + key] = value.clone()
    for i, key in enumerate(others):
        out[key] = torch.randn(3 + i, 5)
    return out


@pytest.fixture(scope='module')
def narrow_timm():
    return timm_davit(**NARROW)


@pytest.fixture(scope='module')
def florence2_vlm(narrow_timm):
    return timm_to_vlm(narrow_timm.state_dict(), FLORENCE2_SUBLAYERS, 'proj', 'vision_tower.', FLORENCE2_OTHERS)


def save(state: dict, path: Path) -> Path:
    if path.suffix == '.safetensors':
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def save_sharded(state: dict, folder: Path, suffix: str) -> Path:
    """Three shards (the vision tower split over the first two, the rest in the third) and their index."""
    vision = [k for k in state if 'vision_tower.' in k]
    groups = [vision[:len(vision) // 2], vision[len(vision) // 2:], [k for k in state if k not in vision]]
    stem = 'model' if suffix == '.safetensors' else 'pytorch_model'
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        shard = f'{stem}-{i:05d}-of-00003{suffix}'
        save({k: state[k] for k in keys}, folder / shard)
        weight_map.update({k: shard for k in keys})
    index = folder / f'{stem}{suffix}.index.json'
    index.write_text(json.dumps({'metadata': {'total_size': 0}, 'weight_map': weight_map}))
    return index


def assert_matches_timm(model: DaViT, reference) -> None:
    images = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        expected = reference_features(reference, model, images)
        actual = model.eval()(images)
    for stage, (a, e) in enumerate(zip(actual, expected)):
        assert (a - e).abs().max().item() <= 1e-4, f'stage {stage}'


def assert_vision_tower_report(report, narrow_timm, outside: int, fmt: str) -> None:
    backbone = [k for k in narrow_timm.state_dict() if not k.startswith('head.')]
    assert report.format == fmt
    assert len(report.loaded) == len(backbone)
    assert report.outside_prefix == outside  # the VLM's other tensors, dropped
    assert report.fresh == OUTPUT_NORMS  # no output norms in a VLM: new layers, not "missing"
    assert report.missing == [] and report.unexpected == []


@pytest.mark.parametrize('suffix', ['.safetensors', '.bin'])
def test_florence2_vlm_checkpoint_loads_the_vision_tower(tmp_path, narrow_timm, florence2_vlm, suffix, log_records):
    path = save(florence2_vlm, tmp_path / f'florence2{suffix}')
    model = DaViT(arch=dict(NARROW), drop_path_rate=0.0)
    report = load_pretrained(model, str(path))
    assert_vision_tower_report(report, narrow_timm, len(FLORENCE2_OTHERS), 'florence2')
    assert_matches_timm(model, narrow_timm)
    assert not [r for r in log_records if r.levelno >= logging.WARNING]
    info = '\n'.join(r.getMessage() for r in log_records)
    assert f'{len(FLORENCE2_OTHERS)} keys outside "vision_tower." dropped' in info
    assert 'output norms norm0, norm1, norm2, norm3 freshly initialised' in info


def test_transformers_port_loads(tmp_path, narrow_timm):
    state = timm_to_vlm(narrow_timm.state_dict(), TRANSFORMERS_SUBLAYERS, 'conv', 'model.vision_tower.',
                        TRANSFORMERS_OTHERS)
    path = save(state, tmp_path / 'model.safetensors')
    model = DaViT(arch=dict(NARROW), drop_path_rate=0.0)
    report = load_pretrained(model, str(path))
    assert_vision_tower_report(report, narrow_timm, len(TRANSFORMERS_OTHERS), 'florence2-transformers')
    assert_matches_timm(model, narrow_timm)


def spy_on_opened_files(monkeypatch) -> list:
    """The paths every torch or safetensors file is opened with (torch.load, safetensors.safe_open), in order."""
    import safetensors
    opened = []

    def torch_load(file, *args, original=torch.load, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, Path)) else getattr(file, 'name', file))
        return original(file, *args, **kwargs)

    def safe_open(file, *args, original=safetensors.safe_open, **kwargs):
        opened.append(os.fspath(file))
        return original(file, *args, **kwargs)

    monkeypatch.setattr(torch, 'load', torch_load)
    monkeypatch.setattr(safetensors, 'safe_open', safe_open)
    return opened


@pytest.mark.parametrize('suffix', ['.safetensors', '.bin'])
def test_sharded_checkpoint_opens_only_the_vision_tower_shards(tmp_path, narrow_timm, florence2_vlm, suffix,
                                                               monkeypatch):
    index = save_sharded(florence2_vlm, tmp_path, suffix)
    stem = 'model' if suffix == '.safetensors' else 'pytorch_model'
    language_model = tmp_path / f'{stem}-00003-of-00003{suffix}'
    language_model.write_bytes(language_model.read_bytes()[:100])  # truncated: reading it would fail
    opened = spy_on_opened_files(monkeypatch)
    model = DaViT(arch=dict(NARROW), drop_path_rate=0.0)
    report = load_pretrained(model, str(index))
    assert_vision_tower_report(report, narrow_timm, len(FLORENCE2_OTHERS), 'florence2')
    assert_matches_timm(model, narrow_timm)
    # The language model's shard is never opened; each vision shard is (once per reader: header, tensors).
    assert {Path(p).name for p in opened} == {f'{stem}-00001-of-00003{suffix}', f'{stem}-00002-of-00003{suffix}'}


@pytest.mark.parametrize('problem', ['not json', 'no weight_map', 'shard numbers', 'missing shard', 'wrong shard'])
def test_broken_sharded_index_says_what_is_wrong(tmp_path, florence2_vlm, problem):
    index = save_sharded(florence2_vlm, tmp_path, '.safetensors')
    weight_map = json.loads(index.read_text())['weight_map']
    first = next(iter(weight_map))
    if problem == 'not json':
        index.write_text('{"weight_map": ')
    elif problem == 'no weight_map':
        index.write_text(json.dumps({'metadata': {}}))
    elif problem == 'shard numbers':
        index.write_text(json.dumps({'weight_map': {key: 1 for key in weight_map}}))
    elif problem == 'missing shard':
        (tmp_path / 'model-00002-of-00003.safetensors').unlink()
    else:  # the index sends the first tensor to a shard that does not hold it
        index.write_text(json.dumps({'weight_map': dict(weight_map, **{first: 'model-00003-of-00003.safetensors'})}))
    expected = {
        'not json': (ValueError, f'{index} is not a sharded-checkpoint index (a JSON file with a "weight_map" from '
                                 'tensor names to shard files): JSONDecodeError'),
        'no weight_map': (ValueError, f"{index} is not a sharded-checkpoint index (a JSON file with a \"weight_map\" "
                                      "from tensor names to shard files): KeyError: 'weight_map'"),
        'shard numbers': (ValueError, 'TypeError: weight_map is not a mapping from tensor names to shard file names'),
        'missing shard': (FileNotFoundError, f'Shard model-00002-of-00003.safetensors listed in {index} is missing: '
                                             f'the shards must lie next to their index file ({tmp_path})'),
        'wrong shard': (ValueError, f'{index} maps 1 tensors to shards that do not hold them (e.g. {first} in '
                                    'model-00003-of-00003.safetensors): index and shards are from different '
                                    'checkpoints'),
    }
    error, message = expected[problem]
    with pytest.raises(error) as info:
        load_pretrained(DaViT(arch=dict(NARROW)), str(index))
    assert message in str(info.value)


class RunsCode:
    """Pickles as a call to ``os.mkdir``: loading it without ``weights_only`` would create the folder."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


def test_pickle_that_would_run_code_is_refused(tmp_path, narrow_timm):
    marker = tmp_path / 'created_by_the_pickle'
    path = tmp_path / 'pytorch_model.bin'
    torch.save({'state_dict': narrow_timm.state_dict(), 'payload': RunsCode(str(marker))}, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(DaViT(arch=dict(NARROW)), str(path))
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f'Refused to read {path}') and 'mkdir' in message and '.safetensors' in message


def test_directory_is_not_a_file(tmp_path, florence2_vlm):
    save(florence2_vlm, tmp_path / 'model.safetensors')
    with pytest.raises(IsADirectoryError) as info:
        load_pretrained(DaViT(arch=dict(NARROW)), str(tmp_path))
    assert str(info.value) == (f'DaViT checkpoint {tmp_path} is a directory, not a file: pass one of the checkpoint '
                               'files in it: model.safetensors')


def test_truncated_safetensors_error(tmp_path, florence2_vlm):
    path = save(florence2_vlm, tmp_path / 'full.safetensors')
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ValueError, match='Could not read .*truncated.safetensors as a safetensors file'):
        load_pretrained(DaViT(arch=dict(NARROW)), str(truncated))


def test_florence2_weights_into_a_classic_arch_name_the_florence_archs(tmp_path, florence2_vlm):
    state = dict(florence2_vlm)
    state['vision_tower.convs.1.proj.weight'] = torch.randn(32, 16, 3, 3)  # Florence-2's overlapping downsample
    path = save(state, tmp_path / 'model.safetensors')
    with pytest.raises(ValueError, match=r"Shape mismatch for stages.1.downsample.conv.weight: checkpoint "
                                         r"\(32, 16, 3, 3\) vs model \(32, 16, 2, 2\).*arch='florence2-base'"):
        load_pretrained(DaViT(arch=dict(NARROW)), str(path))


def run_converter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / 'tools/model_converters/davit2mmdavit.py'), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_converter_cli_sharded_vlm_to_safetensors(tmp_path, narrow_timm, florence2_vlm):
    index = save_sharded(florence2_vlm, tmp_path, '.safetensors')
    dst = tmp_path / 'florence2_tower.safetensors'
    result = run_converter(str(index), str(dst))
    assert result.returncode == 0, result.stderr
    assert 'florence2 format' in result.stdout
    assert f'dropped {len(FLORENCE2_OTHERS)} keys outside the backbone prefix "vision_tower."' in result.stdout
    written = load_file(str(dst))
    expected = timm_to_mmdavit(narrow_timm.state_dict())  # the test's own renaming, not the converter's
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[k], v) for k, v in expected.items())
    model = DaViT(arch=dict(NARROW), drop_path_rate=0.0)
    missing, unexpected = model.load_state_dict(written, strict=False)  # plain torch loading, no conversion
    assert sorted(missing) == OUTPUT_NORMS and unexpected == []
    assert_matches_timm(model, narrow_timm)


@pytest.mark.parametrize('problem', ['directory', 'missing', 'destination directory'])
def test_converter_cli_errors_in_one_line(tmp_path, florence2_vlm, problem, monkeypatch, capsys):
    # In-process (an uncaught exception would fail the test), as a fresh interpreter costs ~10 s of imports.
    spec = importlib.util.spec_from_file_location('davit2mmdavit', ROOT / 'tools/model_converters/davit2mmdavit.py')
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    src = save(florence2_vlm, tmp_path / 'model.safetensors')
    args = {'directory': (str(tmp_path), str(tmp_path / 'out.pth')),
            'missing': (str(tmp_path / 'nope.pth'), str(tmp_path / 'out.pth')),
            'destination directory': (str(src), str(tmp_path))}[problem]
    monkeypatch.setattr(sys, 'argv', ['davit2mmdavit.py', *args])
    assert converter.main() == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith('error: ')
    expected = {'directory': f'DaViT checkpoint {tmp_path} is a directory, not a file',
                'missing': f'DaViT checkpoint not found: {tmp_path / "nope.pth"}',
                'destination directory': f'{tmp_path} is a directory, not a file'}[problem]
    assert expected in stderr


# A narrow Florence-2 tower: florence2-base's switches (3x3 overlapping downsample, channel attention v2, window 12).
NARROW_FL = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=12, downsample='overlap',
                 channel_attention='v2')


@pytest.fixture(scope='module')
def narrow_timm_fl():
    return timm_davit_fl('davit_base_fl', embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))


@pytest.mark.parametrize('written_as', ['timm davit_*_fl', 'florence2 VLM', 'florence2-transformers'])
def test_florence2_tower_from_each_format_matches_timm_fl(tmp_path, narrow_timm_fl, written_as):
    state = narrow_timm_fl.state_dict()
    assert any('.spatial_block.' in k for k in state)  # timm's _fl towers name their blocks
    if written_as == 'florence2 VLM':
        state = timm_to_vlm(state, FLORENCE2_SUBLAYERS, 'proj', 'vision_tower.', FLORENCE2_OTHERS)
    elif written_as == 'florence2-transformers':
        state = timm_to_vlm(state, TRANSFORMERS_SUBLAYERS, 'conv', 'model.vision_tower.', TRANSFORMERS_OTHERS)
    path = save({k: v.contiguous() for k, v in state.items()}, tmp_path / 'model.safetensors')
    model = DaViT(arch=dict(NARROW_FL), drop_path_rate=0.0)
    report = load_pretrained(model, str(path))
    assert report.format == {'timm davit_*_fl': 'timm', 'florence2 VLM': 'florence2'}.get(written_as, written_as)
    assert report.fresh == OUTPUT_NORMS and report.missing == []
    assert model.stages[1].downsample.conv.weight.shape[2:] == (3, 3)
    assert_matches_timm(model, narrow_timm_fl)


# --- Hardening: in-place conversion, bad destinations, URLs, partial / non-float / duplicate checkpoints, ~ ----------

def load_converter():
    """The converter script as a module, to call its main() in-process (a fresh interpreter costs ~10 s)."""
    spec = importlib.util.spec_from_file_location('davit2mmdavit', ROOT / 'tools/model_converters/davit2mmdavit.py')
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    return converter


def test_converter_in_place_keeps_the_file(tmp_path, narrow_timm, monkeypatch):
    """SRC == DST for each output format. A .pth source is memory-mapped while it is read: writing over it
    (the old torch.save to the same path) killed the converter with SIGBUS and left a truncated file. That one
    runs in a subprocess, as the crash would take pytest down with it."""
    expected = timm_to_mmdavit(narrow_timm.state_dict())
    pth, safetensors_file = tmp_path / 'w.pth', tmp_path / 'w.safetensors'
    torch.save({k: v.clone() for k, v in narrow_timm.state_dict().items()}, pth)
    save({k: v.contiguous() for k, v in narrow_timm.state_dict().items()}, safetensors_file)
    result = run_converter(str(pth), str(pth))
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    monkeypatch.setattr(sys, 'argv', ['davit2mmdavit.py', str(safetensors_file), str(safetensors_file)])
    assert load_converter().main() == 0
    for path in (pth, safetensors_file):
        written = torch.load(path, weights_only=True)['state_dict'] if path.suffix == '.pth' else load_file(str(path))
        written = {k: v for k, v in written.items() if not k.startswith('head.')}
        assert sorted(written) == sorted(expected), path.name
        assert all(torch.equal(written[k], v) for k, v in expected.items()), path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ['w.pth', 'w.safetensors']  # no temporary file left


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_converter_failed_write_leaves_destination_as_it_was(tmp_path, florence2_vlm, suffix, monkeypatch, capsys):
    """A write that fails half-way (disk full) leaves the old DST whole and no temporary file behind."""
    import safetensors.torch
    converter = load_converter()
    src = save(florence2_vlm, tmp_path / 'model.safetensors')
    dst = tmp_path / f'tower{suffix}'
    dst.write_bytes(b'the previous file')

    def fails_half_way(obj, path, *args, **kwargs):
        Path(path).write_bytes(b'half')
        raise OSError(28, 'No space left on device (simulated)')

    monkeypatch.setattr(torch, 'save', fails_half_way)
    monkeypatch.setattr(safetensors.torch, 'save_file', fails_half_way)
    monkeypatch.setattr(sys, 'argv', ['davit2mmdavit.py', str(src), str(dst)])
    assert converter.main() == 1
    stderr = capsys.readouterr().err
    assert stderr == f'error: could not write {dst} (OSError: [Errno 28] No space left on device (simulated))\n'
    assert dst.read_bytes() == b'the previous file'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.safetensors', f'tower{suffix}']


@pytest.mark.parametrize('problem', ['missing folder .pth', 'missing folder .safetensors', 'empty', 'under /proc .pth',
                                     'under /proc .safetensors'])
def test_converter_destination_errors_in_one_line(tmp_path, florence2_vlm, problem, monkeypatch, capsys):
    converter = load_converter()
    src = save(florence2_vlm, tmp_path / 'model.safetensors')
    suffix = problem.split()[-1]
    dst = {'missing folder': str(tmp_path / 'nope' / f'tower{suffix}'), 'empty': '',
           'under /proc': f'/proc/davit_tower{suffix}'}[problem.rsplit(' ', 1)[0] if problem != 'empty' else 'empty']
    monkeypatch.setattr(sys, 'argv', ['davit2mmdavit.py', str(src), dst])
    assert converter.main() == 1
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith('error: '), stderr
    expected = {'missing folder': f'the folder {tmp_path / "nope"} does not exist; create it first',
                'empty': 'DST is empty: give the converted checkpoint a file name',
                'under /proc': f'could not write /proc/davit_tower{suffix} ('}[
                    problem.rsplit(' ', 1)[0] if problem != 'empty' else 'empty']
    assert expected in stderr
    assert not (tmp_path / 'nope').exists()


def serve_folder(folder: Path, monkeypatch):
    """An HTTP server on 127.0.0.1 for ``folder`` (in a thread); returns its base URL and the server."""
    import functools
    import http.server
    import threading
    for name in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(name, raising=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f'http://127.0.0.1:{server.server_address[1]}', server


def test_init_cfg_with_a_url_loads_through_mmengine(tmp_path, narrow_timm, monkeypatch):
    served = tmp_path / 'served'
    served.mkdir()
    torch.save({'state_dict': narrow_timm.state_dict(), 'meta': {}}, served / 'davit_narrow.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))  # where mmengine caches downloads
    url, server = serve_folder(served, monkeypatch)
    try:
        model = DaViT(arch=dict(NARROW), drop_path_rate=0.0,
                      init_cfg=dict(type='Pretrained', checkpoint=f'{url}/davit_narrow.pth'))
        model.init_weights()
    finally:
        server.shutdown()
    assert_matches_timm(model, narrow_timm)
    with pytest.raises(ValueError) as info:
        load_pretrained(DaViT(arch=dict(NARROW)), 'nosuchscheme://bucket/davit.pth')
    message = str(info.value)
    assert 'no checkpoint loader knows its scheme nosuchscheme://' in message
    assert all(scheme in message for scheme in ('hf-hub://', 'http://', 'https://', 's3://'))


def test_init_cfg_refuses_a_checkpoint_with_less_than_half_of_the_weights(tmp_path, narrow_timm, log_records):
    """The load_from rule (MIN_BACKBONE_SHARE of the backbone's elements), with its opt-out."""
    from mmdavit.engine.checkpointing import MIN_BACKBONE_SHARE
    state = {k: v for k, v in narrow_timm.state_dict().items() if k.startswith(('stem.', 'stages.0.', 'stages.1.'))}
    path = save(state, tmp_path / 'first_stages.pth')
    model = DaViT(arch=dict(NARROW), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    own = model.state_dict()
    share = sum(own[k].numel() for k in timm_to_mmdavit(state)) / sum(v.numel() for v in own.values())
    assert share < MIN_BACKBONE_SHARE
    with pytest.raises(ValueError) as info:
        model.init_weights()
    assert str(info.value).startswith(f'{path} would give this DaViT (arch={model.arch}) only {share:.1%} of its '
                                      f'weights ({len(state)} of {len(own)} tensors; not in it: ')
    assert 'add allow_partial=True to the Pretrained init_cfg' in str(info.value)
    assert not torch.equal(model.stem.conv.weight, state['stem.conv.weight'])  # nothing loaded
    # Opted out: loads what there is, and the report says how much.
    model = DaViT(arch=dict(NARROW), init_cfg=dict(type='Pretrained', checkpoint=str(path), allow_partial=True))
    model.init_weights()
    assert torch.equal(model.stages[1].blocks[0].channel.attn.qkv.weight, state['stages.1.blocks.0.1.attn.qkv.weight'])
    info = '\n'.join(r.getMessage() for r in log_records if r.levelno == logging.INFO)
    assert f'DaViT: loaded {len(state)}/{len(own)} tensors from timm checkpoint {path}' in info


def test_a_shallower_checkpoint_with_more_than_half_still_loads_with_its_report(tmp_path, log_records):
    """Weights of a shallower DaViT into a deeper one (as DaViT-T into arch='small', 56%) give more than half of
    its elements, so they load; the report counts what loaded and warns about every layer left as it was."""
    shallow = DaViT(arch=dict(NARROW)).state_dict()
    path = save(shallow, tmp_path / 'shallow.pth')
    deeper = DaViT(arch=dict(NARROW, depths=(1, 1, 6, 1)))
    own = deeper.state_dict()
    assert 0.5 < sum(own[k].numel() for k in shallow) / sum(v.numel() for v in own.values()) < 0.7
    report = load_pretrained(deeper, str(path))
    assert report.loaded == sorted(shallow) and len(report.missing) == len(own) - len(shallow)
    messages = '\n'.join(r.getMessage() for r in log_records)
    assert f'DaViT: loaded {len(shallow)}/{len(own)} tensors from mmdavit checkpoint {path}' in messages
    assert 'missing keys, left at their initial values: ' in messages and 'stages.2.blocks.5.channel' in messages


@pytest.mark.parametrize('dtype', [torch.int8, torch.bool])
def test_non_float_tensor_for_a_float_weight_is_refused(tmp_path, narrow_timm, dtype):
    state = dict(narrow_timm.state_dict())
    state['stem.conv.weight'] = (state['stem.conv.weight'] * 100).to(dtype)
    path = save(state, tmp_path / 'quantised.safetensors')
    model = DaViT(arch=dict(NARROW))
    before = model.stem.conv.weight.clone()
    with pytest.raises(ValueError) as info:
        load_pretrained(model, str(path))
    assert str(info.value).startswith(f'stem.conv.weight in {path} is a {str(dtype)[6:]} tensor, but '
                                      'stem.conv.weight is a floating-point weight')
    assert torch.equal(model.stem.conv.weight, before)


@pytest.mark.parametrize('how', ['module. and bare', 'two formats'])
def test_ambiguous_duplicate_keys_are_refused(tmp_path, narrow_timm, how):
    state = dict(narrow_timm.state_dict())
    if how == 'module. and bare':
        state.update({f'module.{k}': torch.zeros_like(v) for k, v in narrow_timm.state_dict().items()})
        first, second = 'stem.conv.weight', 'module.stem.conv.weight'
    else:  # timm numbers the two blocks of a layer, its Florence-2 towers name them: both would load as one
        state['stages.0.blocks.0.spatial_block.norm1.weight'] = torch.zeros(16)
        first, second = 'stages.0.blocks.0.0.norm1.weight', 'stages.0.blocks.0.spatial_block.norm1.weight'
    path = save(state, tmp_path / 'duplicates.pth')
    with pytest.raises(ValueError, match='^Ambiguous checkpoint: ') as info:
        load_pretrained(DaViT(arch=dict(NARROW)), str(path))
    assert f'{first} and {second}' in str(info.value)


def test_tilde_paths_are_expanded(tmp_path, narrow_timm, florence2_vlm, monkeypatch, capsys):
    from mmdavit.engine.checkpointing import LOAD_FROM, read_checkpoint_file
    monkeypatch.setenv('HOME', str(tmp_path))
    save(florence2_vlm, tmp_path / 'vlm.safetensors')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in timm_to_mmdavit(narrow_timm.state_dict()).items()}},
               tmp_path / 'detector.pth')
    # init_cfg
    model = DaViT(arch=dict(NARROW), drop_path_rate=0.0, init_cfg=dict(type='Pretrained', checkpoint='~/vlm.safetensors'))
    model.init_weights()
    assert_matches_timm(model, narrow_timm)
    # load_from's local-file check
    checkpoint = read_checkpoint_file('~/detector.pth', 'cpu', LOAD_FROM)
    assert torch.equal(checkpoint['state_dict']['backbone.stem.conv.weight'], narrow_timm.stem.conv.weight)
    # the converter, both ends
    monkeypatch.setattr(sys, 'argv', ['davit2mmdavit.py', '~/vlm.safetensors', '~/tower.safetensors'])
    assert load_converter().main() == 0, capsys.readouterr().err
    written = load_file(str(tmp_path / 'tower.safetensors'))
    assert torch.equal(written['stem.conv.weight'], narrow_timm.stem.conv.weight)
