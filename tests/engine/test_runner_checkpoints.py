"""DaViTRunner and checkpoints, on a tiny DaViT classifier: checkpoint names with folders, ``load_from``
refusing another backbone (and its neck-and-heads opt-out), resume refusing another model, optimizer
settings a resume overrides, messages that fit ``load_from`` or resume, URL schemes left to mmengine, and
``mmdavit.AtomicCheckpointHook`` in our configs instead of a silently swapped ``CheckpointHook``."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from mmengine.runner import CheckpointLoader

from mmdavit.compat import load_torch_file
from mmdavit.engine import AtomicCheckpointHook, DaViTRunner
from mmdavit.engine.checkpointing import is_local, without_backbone
from tests.engine.toys import LRD_OPTIM, ToyClassifier, runner_kwargs
from tests.conftest import requires_openmmlab

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
ATOMIC = dict(type='mmdavit.AtomicCheckpointHook', interval=1, by_epoch=False, max_keep_ckpts=1)


def make_runner(work_dir, max_iters=2, checkpoint=ATOMIC, **kwargs) -> DaViTRunner:
    default_hooks = dict(logger=dict(type='LoggerHook', interval=1), checkpoint=checkpoint)
    return DaViTRunner(**runner_kwargs(work_dir, max_iters, default_hooks=default_hooks, **kwargs))


def files(folder: Path, pattern: str) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(pattern))


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> Path:
    """Work dir of a 2-iteration run with checkpoints iter_1.pth and iter_2.pth."""
    work_dir = tmp_path_factory.mktemp('trained')
    make_runner(work_dir, checkpoint=dict(ATOMIC, max_keep_ckpts=2)).train()
    return work_dir


def test_checkpoint_names_with_a_folder(tmp_path):
    """filename_tmpl='ckpts/iter_{}.pth' (fine in mmengine) writes there, atomically, and keeps one."""
    make_runner(tmp_path, checkpoint=dict(ATOMIC, filename_tmpl='ckpts/iter_{}.pth')).train()
    assert files(tmp_path, '*.pth') == ['ckpts/iter_2.pth']
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'ckpts/iter_2.pth')
    assert files(tmp_path, '*.partial') == []


def test_failed_write_into_a_folder_leaves_no_partial_file(tmp_path, disk_full_at):
    disk_full_at('iter_2')
    with pytest.raises(OSError, match='simulated'):
        make_runner(tmp_path, checkpoint=dict(ATOMIC, filename_tmpl='ckpts/iter_{}.pth')).train()
    assert files(tmp_path, '*.pth') == ['ckpts/iter_1.pth'] and files(tmp_path, '*.partial') == []
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'ckpts/iter_1.pth')


def swin_like_checkpoint(model: nn.Module) -> dict:
    """This model's head with a backbone named as mmdet's Swin names it (hand-written keys, a few per kind):
    the output norms ``norm0..3`` share DaViT's names and widths, ``stages.{1,2}.downsample.norm`` the names
    only (Swin merges 2x2 patches first: 4x the width); stem and blocks share nothing. Backbone values 7."""
    dims = (32, 64, 128, 256)
    swin = {
        'patch_embed.projection.weight': (dims[0], 3, 4, 4),
        'patch_embed.projection.bias': (dims[0], ),
        'patch_embed.norm.weight': (dims[0], ),
        'stages.0.blocks.0.norm1.weight': (dims[0], ),
        'stages.0.blocks.0.attn.w_msa.relative_position_bias_table': (169, 1),
        'stages.0.blocks.0.attn.w_msa.qkv.weight': (3 * dims[0], dims[0]),
        'stages.0.blocks.0.ffn.layers.0.0.weight': (4 * dims[0], dims[0]),
        'stages.0.downsample.norm.weight': (4 * dims[0], ),
        'stages.0.downsample.reduction.weight': (dims[1], 4 * dims[0]),
        'stages.1.downsample.norm.weight': (4 * dims[1], ),
        'stages.1.downsample.norm.bias': (4 * dims[1], ),
        'stages.2.downsample.norm.weight': (4 * dims[2], ),
        **{f'norm{i}.{kind}': (width, ) for i, width in enumerate(dims) for kind in ('weight', 'bias')},
    }
    state_dict = {f'backbone.{name}': torch.full(shape, 7.0) for name, shape in swin.items()}
    state_dict.update({k: torch.full_like(v, 0.5) for k, v in model.state_dict().items() if k.startswith('head.')})
    return {'state_dict': state_dict, 'meta': {}}


def test_load_from_a_swin_checkpoint_is_refused(tmp_path):
    runner = make_runner(tmp_path / 'work', model=ToyClassifier(out_indices=(0, 1, 2, 3)))  # norm0..3, as detectors
    torch.save(swin_like_checkpoint(runner.model), tmp_path / 'swin.pth')
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"swin.pth would load only 0\.\d% of the weights of this model's DaViT "
                       r'backbone \(8 of \d+ tensors match by name and shape; its backbone keys: '
                       r'backbone.patch_embed.projection.weight, .*; same name, other shape: '
                       r'backbone.stages.1.downsample.norm.weight, .*\): it was trained with another backbone.*'
                       r'model.backbone.init_cfg.*set load_from_skip_backbone=True in the config'):
        runner.load_checkpoint(str(tmp_path / 'swin.pth'))
    assert all(torch.equal(v, before[k]) for k, v in runner.model.state_dict().items())  # nothing loaded


def test_load_from_skip_backbone_loads_neck_and_heads_only(tmp_path):
    """The opt-out: the heads load, the backbone keeps its own weights, even where names and shapes match."""
    runner = make_runner(tmp_path / 'work', model=ToyClassifier(out_indices=(0, 1, 2, 3)),
                         cfg=dict(load_from_skip_backbone=True))
    torch.save(swin_like_checkpoint(runner.model), tmp_path / 'swin.pth')
    before = {k: v.clone() for k, v in runner.model.state_dict().items() if k.startswith('backbone.')}
    runner.load_checkpoint(str(tmp_path / 'swin.pth'))
    state = runner.model.state_dict()
    assert torch.equal(state['head.weight'], torch.full_like(state['head.weight'], 0.5))
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert torch.equal(state['backbone.norm0.weight'], torch.ones(32))  # not Swin's 7


def test_without_backbone_judges_each_key_by_its_revised_name():
    """Keys that ``revise_keys`` maps onto one name (a DataParallel ``module.`` copy beside the plain key) are
    each judged by their own revised name: both backbone copies go, the head stays."""
    state_dict = {'module.backbone.norm0.weight': torch.ones(2), 'backbone.norm0.weight': torch.ones(2),
                  'head.weight': torch.zeros(2), 'module.neck.bias': torch.zeros(1)}
    checkpoint, skipped = without_backbone({'state_dict': state_dict, 'meta': {}}, [(r'^module.', '')])
    assert list(checkpoint['state_dict']) == ['head.weight', 'module.neck.bias'] and skipped == 2
    assert checkpoint['meta'] == {}


class ToyWithNeck(ToyClassifier):
    """Another model: a neck more, which puts two more tensors in the head's param groups."""

    def __init__(self):
        super().__init__()
        self.neck = nn.Linear(256, 256)


def test_resume_from_another_models_checkpoint_names_the_cause(trained, tmp_path):
    runner = make_runner(tmp_path, model=ToyWithNeck(), load_from=str(trained / 'iter_2.pth'), resume=True)
    with pytest.raises(ValueError, match=r'Cannot resume from .*iter_2.pth: it is a checkpoint of another model '
                       r"\(2 of this ToyWithNeck's \d+ parameters are not in it \(neck.weight, neck.bias\)\).*"
                       'load_from=PATH and resume=False'):
        runner.train()


def resume_warnings(trained, work_dir, monkeypatch, about='optimizer state', **kwargs) -> list:
    """Warnings ``about`` something of a resume from iter_2.pth (nothing left to train)."""
    runner = make_runner(work_dir, load_from=str(trained / 'iter_2.pth'), resume=True, **kwargs)
    warnings = []
    monkeypatch.setattr(runner.logger, 'warning', lambda msg, *args, **kw: warnings.append(msg))
    runner.train()
    assert runner.iter == 2
    return [w for w in warnings if about in w]


def test_resume_warns_about_optimizer_settings_the_checkpoint_overrides(trained, tmp_path, monkeypatch):
    """``--cfg-options optim_wrapper.optimizer.lr=2e-3 weight_decay=0.1`` on resume: the checkpoint wins, and
    the log says which values."""
    optim = dict(LRD_OPTIM, optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.1))
    (warning, ) = resume_warnings(trained, tmp_path / 'changed', monkeypatch, optim_wrapper=optim)
    assert f"the optimizer state in {trained / 'iter_2.pth'} replaces the config's settings: " in warning
    assert 'lr 0.002 (config) -> 0.001 (checkpoint), weight_decay 0.1 (config) -> 0.05 (checkpoint);' in warning
    assert resume_warnings(trained, tmp_path / 'same', monkeypatch) == []


def test_resume_says_that_load_from_skip_backbone_does_not_apply(trained, tmp_path, monkeypatch):
    (warning, ) = resume_warnings(trained, tmp_path, monkeypatch, about='load_from_skip_backbone',
                                  cfg=dict(load_from_skip_backbone=True))
    assert warning == (f"load_from_skip_backbone=True applies to load_from only: resuming loads all of "
                       f"{trained / 'iter_2.pth'}, backbone included (it continues that run)")
    assert resume_warnings(trained, tmp_path / 'without', monkeypatch, about='load_from_skip_backbone') == []


def test_load_from_messages_speak_of_load_from(tmp_path):
    runner = make_runner(tmp_path / 'work')
    (tmp_path / 'folder').mkdir()
    with pytest.raises(IsADirectoryError, match=r'^load_from .*folder is a folder, not a checkpoint file \(it holds '
                       r'no .pth, .safetensors or .index.json file\): give the path of the .pth, .safetensors or '
                       r'.index.json file$'):
        runner.load_checkpoint(str(tmp_path / 'folder'))
    (tmp_path / 'folder' / 'model.safetensors').write_bytes(b'')
    with pytest.raises(IsADirectoryError, match=r'\(it holds model.safetensors\)'):
        runner.load_checkpoint(str(tmp_path / 'folder'))
    with pytest.raises(FileNotFoundError, match=r'^load_from checkpoint not found: .*missing.pth$'):
        runner.load_checkpoint(str(tmp_path / 'missing.pth'))
    (tmp_path / 'notes.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match=r'Could not read checkpoint .*notes.pth .*Is the file complete') as error:
        runner.load_checkpoint(str(tmp_path / 'notes.pth'))
    assert 'resume' not in str(error.value)


def test_resume_messages_speak_of_resuming(trained, tmp_path):
    runner = make_runner(tmp_path / 'explicit', load_from=str(tmp_path / 'missing.pth'), resume=True)
    with pytest.raises(FileNotFoundError, match=r'^Checkpoint to resume from not found: .*missing.pth$'):
        runner.train()
    # resume=True alone reads last_checkpoint, which here names a deleted checkpoint
    work_dir = tmp_path / 'auto'
    work_dir.mkdir()
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'iter_9.pth'))
    with pytest.raises(FileNotFoundError, match=r'iter_9.pth, named by .*auto/last_checkpoint \(moved or deleted\?\)'):
        make_runner(work_dir, resume=True).train()
    (tmp_path / 'notes.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='notes.pth .*point --resume at an earlier checkpoint of the run'):
        make_runner(tmp_path / 'bad', load_from=str(tmp_path / 'notes.pth'), resume=True).train()


@pytest.mark.parametrize('path, local', [
    ('hf-hub://microsoft/davit/model.pth', False), ('https://example.org/davit_t.pth', False),
    ('s3://bucket/davit_t.pth', False), ('open-mmlab://resnet50', False), ('torchvision://resnet50', False),
    ('checkpoints/davit_t.pth', True), ('/abs/ckpts/epoch_1.pth', True), ('~/davit_t.pth', True),
])
def test_only_paths_without_a_scheme_are_local(path, local):
    assert is_local(path) == local


def test_load_from_a_url_scheme_goes_to_mmengines_checkpoint_loader(trained, tmp_path):
    """No local-file check for ``scheme://``: mmengine's CheckpointLoader resolves it (as hf-hub:// is)."""
    asked = []

    def load_test_scheme(filename, map_location=None):
        asked.append(filename)
        return load_torch_file(str(trained / 'iter_2.pth'), map_location)

    CheckpointLoader.register_scheme(prefixes='mmdavit-test://', loader=load_test_scheme)
    try:
        runner = make_runner(tmp_path)
        assert runner.load_checkpoint('mmdavit-test://org/davit/iter_2.pth')['meta']['iter'] == 2
    finally:
        CheckpointLoader._schemes.pop('mmdavit-test://')
    assert asked == ['mmdavit-test://org/davit/iter_2.pth']


def test_mmengine_checkpoint_hook_is_kept_as_written_with_a_warning(tmp_path):
    runner = make_runner(tmp_path / 'plain', checkpoint=dict(type='CheckpointHook', interval=1))
    assert [type(h) for h in runner.hooks if isinstance(h, CheckpointHook)] == [CheckpointHook]
    (log, ) = Path(runner.log_dir).glob('*.log')
    assert "Set default_hooks.checkpoint.type='mmdavit.AtomicCheckpointHook'" in log.read_text()
    runner = make_runner(tmp_path / 'atomic')
    assert [type(h) for h in runner.hooks if isinstance(h, CheckpointHook)] == [AtomicCheckpointHook]
    (log, ) = Path(runner.log_dir).glob('*.log')
    assert 'Set default_hooks.checkpoint.type' not in log.read_text()


ATOMIC_LINE = "default_hooks = dict(checkpoint=dict(type='mmdavit.AtomicCheckpointHook'))"


@requires_openmmlab
def test_our_configs_name_the_atomic_checkpoint_hook():
    """Every config that selects one of our runners gets mmdavit.AtomicCheckpointHook: the configs that build
    on mmdet / mmseg / mmpretrain bases set it (keeping the base's arguments), the others inherit it."""
    roots, children = [], []
    for path in sorted(CONFIGS.glob('*/*.py')):
        text = path.read_text()
        (roots if "_base_ = './" not in text else children).append(path.name)
        if "_base_ = './" not in text and 'runner_type' in text:
            assert ATOMIC_LINE in text, path
        assert "type='CheckpointHook'" not in text, path
    assert {'maskrcnn_davit_t.py', 'upernet_davit_t.py', 'davit_t_in1k.py'} <= set(roots)
    assert len(children) > len(roots)
    for name in ('detection/retinanet_davit_s_3x.py', 'segmentation/upernet_davit_t_synthetic.py'):
        checkpoint = Config.fromfile(str(CONFIGS / name)).default_hooks.checkpoint
        assert checkpoint.type == 'mmdavit.AtomicCheckpointHook' and 'interval' in checkpoint, name
