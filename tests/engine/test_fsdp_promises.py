"""What README "Training large models" promises of ``DaViTFSDPStrategy`` / ``DaViTFlexibleRunner`` beyond the
2-rank training runs of ``tests/engine/test_fsdp.py``: the shipped ``configs/*/*_fsdp.py`` build; the wrap
policy gives one FSDP unit per DaViT layer (neck and heads in the root unit); ``--amp`` (bfloat16 autocast of
backbone + neck on CPU ranks) and the backbone's ``with_cp=True`` (each block recomputed in backward) run
inside those units; the clear errors for missing, unreadable and foreign checkpoints, missing datasets and
sharded ``state_dict_cfg``.

The runs use one process, world size 1 over gloo, to save CPU: the model is wrapped into the same FSDP units
as on N ranks and trained through them (torch then keeps whole parameters, ``NO_SHARD``: sharding itself is
what test_fsdp.py's 2-rank runs check). One spawned process runs every case, so the imports are paid once.
"""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, DefaultScope

from tests.configs.backbone_probe import model_part
from tests.configs.tiny_runs import detection_overrides, make_tiny_data
from tests.reliability.runs import CONFIGS, SMALL_MODEL

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / 'configs').glob('*/*_fsdp.py'))
FSDP_RUN = '''
runner_type = 'mmdavit.DaViTFlexibleRunner'
strategy = dict(type='mmdavit.DaViTFSDPStrategy')
launcher = 'pytorch'
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
train_cfg = dict(max_epochs=1, val_begin=1000)
default_hooks = dict(checkpoint=dict(interval=1000), logger=dict(interval=1))
'''
DEPTHS = (1, 1, 2, 1)  # 5 DaViT layers: one unit per layer, not per stage
AMP_WITH_CP = {'model.backbone.arch.depths': DEPTHS, 'model.backbone.with_cp': True,
               'optim_wrapper.type': 'AmpOptimWrapper', 'optim_wrapper.loss_scale': 'dynamic'}
ITERS = 2  # 4 images in batches of 2, one epoch


@HOOKS.register_module(force=True)
class FSDPUnitProbe(Hook):
    """Records, on the wrapped model, the FSDP units and what they wrap; per iteration, how often each
    spatial / channel block ran forward (2 with ``with_cp``: forward, then the recompute in backward) and the
    dtypes that DaViT layers and the box head computed in; the full state dict before and after training.
    Writes ``WORK_DIR/units.json``."""
    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from mmdavit.models.layers import DaViTLayer
        model = runner.model
        units = [m for m in model.modules() if isinstance(m, FSDP)]
        layers = [m for m in model.modules() if isinstance(m, DaViTLayer)]
        self.record = dict(root=type(model.module).__name__ if model is units[0] else None,
                           units=[type(u.module).__name__ for u in units], layers=len(layers),
                           block_calls=[], layer_dtypes=[], head_dtypes=[])
        self.calls, self.layer_dtypes, self.head_dtypes = {}, set(), set()
        for index, layer in enumerate(layers):
            for name in ('spatial', 'channel'):
                block = getattr(layer, name)
                block.register_forward_pre_hook(lambda m, args, key=f'{index}.{name}': self.count(key))
                block.mlp.fc1.register_forward_hook(lambda m, args, out: self.layer_dtypes.add(str(out.dtype)))
        model.module.roi_head.bbox_head.fc_cls.register_forward_hook(
            lambda m, args, out: self.head_dtypes.add(str(out.dtype)))
        self.initial = runner.strategy.model_state_dict()

    def count(self, key: str) -> None:
        self.calls[key] = self.calls.get(key, 0) + 1

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.calls, self.layer_dtypes, self.head_dtypes = {}, set(), set()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.record['block_calls'].append(self.calls)
        self.record['layer_dtypes'].append(sorted(self.layer_dtypes))
        self.record['head_dtypes'].append(sorted(self.head_dtypes))

    def after_train(self, runner) -> None:
        final = runner.strategy.model_state_dict()
        parts = {}
        for name, value in final.items():
            if value.is_floating_point():
                part = parts.setdefault(model_part(name), dict(params=0, moved=0, dtypes=[]))
                part['params'] += 1
                part['moved'] += int(not torch.equal(value, self.initial[name]))
                part['dtypes'] = sorted(set(part['dtypes']) | {str(value.dtype)})
        self.record['parts'] = parts
        with open(os.path.join(runner.work_dir, 'units.json'), 'w') as f:
            json.dump(self.record, f)


def run_cases(rank: int, port: int, cases: list, results: str) -> None:
    """One process of a world of one: builds and trains a ``DaViTFlexibleRunner`` per case and records what
    each raised."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK='0', LOCAL_RANK='0', WORLD_SIZE='1')
    torch.set_num_threads(1)
    import mmdavit  # noqa: F401
    from mmdavit.registry import RUNNERS
    outcome = {}
    for case in cases:
        cfg = Config.fromfile(case['config'])
        cfg.merge_from_dict(case.get('options', {}))
        cfg.work_dir = case['work_dir']
        cfg.experiment_name = case['name']  # one runner after another in a process: no shared logger/hub
        try:
            RUNNERS.build(cfg).train()
            outcome[case['name']] = None
        except Exception as error:
            outcome[case['name']] = [type(error).__name__, str(error)]
    with open(results, 'w') as f:
        json.dump(outcome, f)


def write_config(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = CONFIGS['detection']
    for index, source in enumerate([detection_overrides(data['coco']), SMALL_MODEL['detection'], FSDP_RUN]):
        path = folder / f'fsdp_{index}.py'
        path.write_text(f'_base_ = {str(base)!r}\n{source}')
        base = path
    return base


def foreign_checkpoint(path: Path) -> Path:
    """A checkpoint of another model: a wider DaViT (embed_dims 48), the same names with other shapes."""
    from mmdavit.models import DaViT
    other = DaViT(arch=dict(embed_dims=48, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)))
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in other.state_dict().items()}}, path)
    return path


# case name -> config options; the expected outcomes are in the tests below
def cases(root: Path) -> dict:
    notes = root / 'notes.pth'
    notes.write_text('not a checkpoint')
    foreign = foreign_checkpoint(root / 'wider_davit.pth')
    missing = root / 'missing.pth'
    return {
        'amp_with_cp': dict(AMP_WITH_CP, custom_hooks=[dict(type='FSDPUnitProbe')]),
        'load_from_missing': {'load_from': str(missing)},
        'resume_missing': {'load_from': str(missing), 'resume': True},
        'load_from_unreadable': {'load_from': str(notes)},
        'resume_unreadable': {'load_from': str(notes), 'resume': True},
        'load_from_foreign': {'load_from': str(foreign)},
        'resume_foreign': {'load_from': str(foreign), 'resume': True},
        'missing_dataset': {'train_dataloader.dataset.data_root': str(root / 'no_such_data')},
    }


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('fsdp_promises')
    config = str(write_config(root / 'configs', make_tiny_data(root / 'data')))
    options = cases(root)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    results = root / 'results.json'
    mp.spawn(run_cases, nprocs=1, args=(port, [dict(name=name, config=config, work_dir=str(root / name),
                                                    options=value) for name, value in options.items()],
                                        str(results)))
    return dict(root=root, outcome=json.loads(results.read_text()))


pytestmark = pytest.mark.slow


# --- one FSDP unit per DaViT layer; --amp and with_cp inside the units ---------------------------------


def test_one_fsdp_unit_per_davit_layer(runs):
    assert runs['outcome']['amp_with_cp'] is None, runs['outcome']['amp_with_cp']
    record = json.loads((runs['root'] / 'amp_with_cp' / 'units.json').read_text())
    assert record['layers'] == sum(DEPTHS)
    # The root unit holds the detector (neck, heads, stem, downsamples, output norms); each DaViT layer is a
    # unit of its own, nothing else is.
    assert record['root'] == 'MaskRCNN'
    assert record['units'] == ['MaskRCNN'] + ['DaViTLayer'] * sum(DEPTHS)


def test_amp_and_with_cp_run_inside_the_units(runs):
    """``--amp`` on CPU ranks: bfloat16 inside every DaViT layer, float32 in the heads and in the weights;
    ``with_cp=True``: every spatial and channel block runs forward twice per iteration (the second time in
    backward, recomputing what it did not keep); and every DaViT layer trained."""
    record = json.loads((runs['root'] / 'amp_with_cp' / 'units.json').read_text())
    blocks = {f'{i}.{name}' for i in range(sum(DEPTHS)) for name in ('spatial', 'channel')}
    assert record['block_calls'] == [dict.fromkeys(blocks, 2)] * ITERS
    assert record['layer_dtypes'] == [['torch.bfloat16']] * ITERS
    assert record['head_dtypes'] == [['torch.float32']] * ITERS
    parts = record['parts']
    layers = {p: r for p, r in parts.items() if '.blocks.' in p}
    assert len(layers) == sum(DEPTHS)
    assert all(r['dtypes'] == ['torch.float32'] for r in parts.values())
    assert all(r['moved'] == r['params'] for r in layers.values()), layers


# --- clear errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize('case,error,pattern', [
    ('load_from_missing', 'FileNotFoundError', r'^load_from checkpoint not found: .*missing.pth$'),
    ('resume_missing', 'FileNotFoundError', r'^Checkpoint to resume from not found: .*missing.pth$'),
    ('load_from_unreadable', 'ValueError', r'Could not read checkpoint .*notes.pth .*Is the file complete'),
    ('resume_unreadable', 'ValueError', r'notes.pth .*point --resume at an earlier checkpoint of the run'),
    ('load_from_foreign', 'ValueError', r"wider_davit.pth would load only 0\.0% of the weights of this model's "
                                        r'DaViT backbone'),
    ('resume_foreign', 'ValueError', r'Cannot resume from .*wider_davit.pth: it is a checkpoint of another model'),
    ('missing_dataset', 'FileNotFoundError', r'Dataset not found: .*no_such_data'),
])
def test_clear_errors_under_fsdp(runs, case, error, pattern):
    import re
    outcome = runs['outcome'][case]
    assert outcome is not None, f'{case}: no error'
    assert outcome[0] == error and re.search(pattern, outcome[1], re.S), outcome


def test_sharded_state_dict_cfg_is_refused():
    from mmdavit.engine import DaViTFSDPStrategy
    for cfg in ('local', 'sharded', dict(state_dict_type='SHARDED_STATE_DICT')):
        with pytest.raises(ValueError, match=r'saves full state dicts only, got state_dict_cfg=.*set '
                                             r'state_dict_cfg="full"'):
            DaViTFSDPStrategy(state_dict_cfg=cfg)


# --- the shipped configs ------------------------------------------------------------------------------


def test_fsdp_configs_are_shipped():
    assert [p.name for p in SHIPPED] == ['mask2former_florence2_large_lsj_50e_coco_fsdp.py',
                                         'maskrcnn_davit_h_fsdp.py', 'maskrcnn_florence2_large_fsdp.py']


@pytest.mark.parametrize('path', SHIPPED, ids=lambda p: p.stem)
def test_shipped_fsdp_config_builds(path):
    """Config and model (on the meta device: 360M parameters without their storage) build, with the runner and
    strategy the README names (the 1-process runs above build them from the same two lines); the backbone
    recomputes its blocks (``with_cp``)."""
    import mmdavit  # noqa: F401
    from mmdavit.engine import DaViTFlexibleRunner, DaViTFSDPStrategy
    from mmdavit.models import DaViT
    from mmdavit.registry import RUNNERS, STRATEGIES
    cfg = Config.fromfile(str(path))
    assert RUNNERS.get(cfg.runner_type) is DaViTFlexibleRunner
    assert cfg.strategy == dict(type='mmdavit.DaViTFSDPStrategy')
    assert STRATEGIES.get(cfg.strategy.type) is DaViTFSDPStrategy
    assert cfg.model.backbone.with_cp is True
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    __import__(f'{scope}.utils', fromlist=['register_all_modules']).register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(scope), torch.device('meta'):
        model = registry.build(cfg.model)
    assert isinstance(model.backbone, DaViT) and model.backbone.with_cp
    assert sum(p.numel() for p in model.backbone.parameters()) > 300e6  # DaViT-H / Florence-2-large tower
