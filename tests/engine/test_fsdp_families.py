"""Every detector and segmentor family we ship configs for trains under ``DaViTFSDPStrategy`` on 2 CPU ranks
(gloo) as it trains under DDP: parameter groups (``paramwise_cfg``), gradient clipping by the global norm
and its logged ``grad_norm``, final weights.

One ``mp.spawn`` of 2 processes runs, one after the other, each family's synthetic twin (narrow DaViT: dims
32..256, one layer per stage; test-sized heads) for 2 iterations of 1 image per rank, with gradient clipping
on (the configs' ``max_norm`` where they ship one) and a constant lr:

* under FSDP: RetinaNet, Mask R-CNN, Cascade Mask R-CNN (its layer-wise LR decay), DINO, Mask2Former on COCO and
  on ADE20K, UperNet (its optimizer wrapper as ``--amp`` makes it: bfloat16 autocast on the CPU);
* under mmengine's DDP strategy too: Mask R-CNN (with ``flat_decay_mult=0`` and a ``custom_keys`` entry that
  spans a DaViT layer's FSDP boundary), DINO and Mask2Former COCO (the recipe of
  ``mask2former_florence2_large_lsj_50e_coco_fsdp.py``: its custom_keys, norm_decay_mult=0, max_norm 0.01).

A probe hook records each run's parameter groups by parameter name, the logged ``grad_norm`` and, under FSDP,
the norm of the whole gradient computed independently (each rank's shards' squares, summed over the ranks).
"""
import json
import math
import os
import traceback
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from tests.configs.tiny_runs import detection_overrides, make_tiny_data, segmentation_overrides
from tests.engine.test_fsdp import DDP_STRATEGY, WORLD_SIZE, spawn
from tests.reliability.runs import SMALL_BACKBONE, SMALL_MODEL

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
ITERS = 2

# A RetinaNet on the synthetic shapes (no synthetic twin ships): retinanet_davit_t.py at 160x128, 4 classes.
RETINANET_SYNTHETIC = '''
metainfo = dict(classes=('circle', 'square', 'triangle', 'star'))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='RandomFlip', prob=0.5), dict(type='Resize', scale=(160, 128), keep_ratio=True),
                  dict(type='PackDetInputs')]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(160, 128), keep_ratio=True),
                 dict(type='LoadAnnotations', with_bbox=True), dict(type='PackDetInputs')]
train_dataloader = dict(dataset=dict(metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(metainfo=metainfo, pipeline=test_pipeline))
model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes=4))
'''
# Test-sized heads on the narrow DaViT (dims 32, 64, 128, 256).
NARROW = {
    'retinanet': f'''
model = dict(backbone=dict(arch={SMALL_BACKBONE}), neck=dict(in_channels=[64, 128, 256], out_channels=32),
             bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1))
''',
    'maskrcnn': SMALL_MODEL['detection'],
    'cascade': f'''
model = dict(
    backbone=dict(arch={SMALL_BACKBONE}),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=[dict(head, in_channels=32, conv_out_channels=32, fc_out_channels=64)
                   for head in _base_.model.roi_head.bbox_head],
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=1, in_channels=32, conv_out_channels=32)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=6))  # layer ids of a 1-layer-per-stage DaViT: stem, 4, head
''',
    'dino': f'''
model = dict(backbone=dict(arch={SMALL_BACKBONE}), neck=dict(in_channels=[64, 128, 256]),
             encoder=dict(num_layers=1), decoder=dict(num_layers=1))
''',
    'mask2former_coco': f'''
model = dict(backbone=dict(arch={SMALL_BACKBONE}), panoptic_head=dict(
    in_channels=[32, 64, 128, 256], num_queries=20, pixel_decoder=dict(encoder=dict(num_layers=1)),
    transformer_decoder=dict(num_layers=2)), train_cfg=dict(num_points=1024))
''',
    'mask2former_ade': f'''
model = dict(backbone=dict(arch={SMALL_BACKBONE}), decode_head=dict(
    in_channels=[32, 64, 128, 256], num_queries=20, pixel_decoder=dict(encoder=dict(num_layers=1)),
    transformer_decoder=dict(num_layers=2), train_cfg=dict(num_points=1024)))
''',
    'upernet': SMALL_MODEL['segmentation'],
}
FAMILIES = {  # name: (config, data kind, train loop, options of this test)
    'retinanet': ('detection/retinanet_davit_t.py', 'coco', 'epoch', RETINANET_SYNTHETIC
                  + "optim_wrapper = dict(clip_grad=dict(max_norm=1.0))\n"),
    'maskrcnn': ('detection/maskrcnn_davit_t_synthetic.py', 'coco', 'epoch', '''
optim_wrapper = dict(clip_grad=dict(max_norm=0.01), paramwise_cfg=dict(
    flat_decay_mult=0.0, custom_keys={'backbone.stages.1.blocks.0.spatial.': dict(lr_mult=0.5)}))
'''),
    'cascade': ('detection/cascade_maskrcnn_davit_t_3x_synthetic.py', 'coco', 'epoch',
                "optim_wrapper = dict(clip_grad=dict(max_norm=1.0))\n"),
    'dino': ('detection/dino_4scale_davit_t_12e_synthetic.py', 'coco', 'epoch', ''),  # ships max_norm 0.1
    'mask2former_coco': ('detection/mask2former_davit_t_lsj_50e_coco_synthetic.py', 'coco', 'iter', ''),  # 0.01
    'mask2former_ade': ('segmentation/mask2former_davit_t_160k_ade20k_synthetic.py', 'ade', 'iter', ''),  # 0.01
    # 2 images per rank: BN in the pooling module needs more than one value per channel
    'upernet': ('segmentation/upernet_davit_t_synthetic.py', 'ade', 'iter', '''
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(type='AmpOptimWrapper', clip_grad=dict(max_norm=1.0))
'''),
}
WITH_DDP = ('maskrcnn', 'dino', 'mask2former_coco')
RUN = f'''
randomness = dict(seed=0)
launcher = 'pytorch'
env_cfg = dict(dist_cfg=dict(backend='gloo', timeout=300))
runner_type = 'mmdavit.DaViTFlexibleRunner'
strategy = dict(type='mmdavit.DaViTFSDPStrategy')
train_dataloader = dict(batch_size=1)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end={ITERS})]
default_hooks = dict(checkpoint=dict(interval=1000), logger=dict(interval=1))
custom_hooks = [dict(type='FamilyProbe')]
'''
TRAIN_CFG = {  # ITERS iterations of 1 image per rank: one epoch of the 4 images, or ITERS iterations
    'epoch': 'train_cfg = dict(max_epochs=1, val_begin=1000)\n',
    'iter': f'''
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={ITERS}, val_begin=1000, val_interval=1000)
default_hooks = dict(checkpoint=dict(by_epoch=False))
'''}


def clean(name: str) -> str:
    """A parameter's name in the unsharded model (DDP, FSDP and checkpoint wrappers add prefixes)."""
    name = name[len('module.'):] if name.startswith('module.') else name
    return name.replace('_fsdp_wrapped_module.', '').replace('_checkpoint_wrapped_module.', '')


def groups_by_name(model: torch.nn.Module, param_groups: list) -> dict:
    """Each parameter's optimizer settings (lr, weight_decay, betas, ...), keyed by its unsharded name."""
    names = {id(p): clean(n) for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v for k, v in group.items() if k not in ('params', 'initial_lr')}
            for group in param_groups for p in group['params']}


@HOOKS.register_module(force=True)
class FamilyProbe(Hook):
    """Before training: the parameter groups by name and the weights (all ranks gather, rank 0 saves); under
    FSDP, wraps the clip function to compute the norm of the whole gradient independently (every rank's
    shards' squares, summed over the ranks, before clipping); after each iteration: the loss and the logged
    grad_norm; after training: the weights."""
    priority = 'LOWEST'

    def before_train(self, runner):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        self.records, self.global_norms = [], []
        self.save(runner, 'before.pth', runner.strategy.model_state_dict())
        if runner.rank == 0:
            groups = groups_by_name(runner.model, runner.optim_wrapper.optimizer.param_groups)
            torch.save(groups, f'{runner.work_dir}/groups.pth')
        wrapper = runner.optim_wrapper
        if isinstance(runner.model, FSDP) and getattr(wrapper, 'clip_grad_kwargs', None):
            clip = wrapper.clip_func

            def checked_clip(params, **kwargs):
                params = list(params)
                square = sum(p.grad.double().pow(2).sum() for p in params if p.grad is not None)
                square = torch.as_tensor(square, dtype=torch.float64)
                torch.distributed.all_reduce(square)
                self.global_norms.append(math.sqrt(float(square)))
                return clip(params, **kwargs)

            wrapper.clip_func = checked_clip

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        scalars = runner.message_hub.log_scalars
        self.records.append(dict(loss=float(outputs['loss']),
                                 grad_norm=scalars['train/grad_norm'].current() if 'train/grad_norm' in scalars
                                 else None))

    def after_train(self, runner):
        self.save(runner, 'after.pth', runner.strategy.model_state_dict())
        if runner.rank == 0:
            (Path(runner.work_dir) / 'records.json').write_text(
                json.dumps(dict(iterations=self.records, global_norms=self.global_norms)))

    @staticmethod
    def save(runner, filename: str, state: dict) -> None:
        if runner.rank == 0:
            torch.save({clean(k): v for k, v in state.items()}, f'{runner.work_dir}/{filename}')


def family_worker(rank: int, port: int, runs: list) -> None:
    """Each run in turn; an error is written to the run's folder and the next run goes on (both ranks fail
    alike when a model does not build; the gloo timeout ends a run where only one rank failed)."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    import mmdavit  # noqa: F401
    from mmdavit.registry import RUNNERS
    for run in runs:
        cfg = Config.fromfile(run['config'])
        cfg.merge_from_dict(run.get('options', {}))
        cfg.work_dir = run['work_dir']
        cfg.experiment_name = cfg.visualizer.name = run['name']  # one runner after another in a process
        try:
            RUNNERS.build(cfg).train()
        except Exception:
            Path(run['work_dir'], f'error_rank{rank}.txt').write_text(traceback.format_exc())


def write_config(folder: Path, family: str, data: dict) -> str:
    name, kind, loop, options = FAMILIES[family]
    overrides = detection_overrides(data['coco']) if kind == 'coco' else segmentation_overrides(data['ade'])
    folder.mkdir(parents=True, exist_ok=True)
    base = CONFIGS / name
    for index, source in enumerate([overrides, NARROW[family], RUN + TRAIN_CFG[loop], options]):
        path = folder / f'{family}_{index}.py'
        path.write_text(f'_base_ = {str(base)!r}\n{source}')
        base = path
    return str(base)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('fsdp_families')
    data = make_tiny_data(root / 'data')
    jobs, work = [], {}
    for family in FAMILIES:
        config = work[family, 'config'] = write_config(root / 'configs', family, data)
        for strategy in ('fsdp', 'ddp') if family in WITH_DDP else ('fsdp', ):
            work[family, strategy] = root / f'{family}_{strategy}'
            jobs.append(dict(config=config, work_dir=str(work[family, strategy]), name=f'{family}_{strategy}',
                             options=DDP_STRATEGY if strategy == 'ddp' else {}))
    spawn(jobs, family_worker)
    return work


def result(runs, family: str, strategy: str) -> dict:
    work = runs[family, strategy]
    errors = sorted(work.glob('error_rank*.txt'))
    assert not errors, f'{family} under {strategy}:\n' + errors[0].read_text()
    records = json.loads((work / 'records.json').read_text())
    load = dict(map_location='cpu', weights_only=True)
    return dict(records, before=torch.load(work / 'before.pth', **load),
                after=torch.load(work / 'after.pth', **load), groups=torch.load(work / 'groups.pth', **load))


pytestmark = pytest.mark.slow


@pytest.mark.parametrize('family', list(FAMILIES))
def test_family_trains_under_fsdp_clipping_by_the_global_norm(runs, family):
    """The twin builds and trains 2 iterations under FSDP: finite losses, every DaViT weight moved, and the
    clipping (on in every run) used and logged the norm of the whole gradient, over both ranks' shards."""
    fsdp = result(runs, family, 'fsdp')
    assert len(fsdp['iterations']) == ITERS and all(math.isfinite(r['loss']) for r in fsdp['iterations'])
    backbone = [k for k in fsdp['before'] if k.startswith('backbone.') and fsdp['before'][k].is_floating_point()
                and 'running_' not in k]
    assert backbone and all(not torch.equal(fsdp['before'][k], fsdp['after'][k]) for k in backbone), \
        [k for k in backbone if torch.equal(fsdp['before'][k], fsdp['after'][k])]
    logged = [r['grad_norm'] for r in fsdp['iterations']]
    assert len(fsdp['global_norms']) == ITERS
    for norm, expected in zip(logged, fsdp['global_norms']):
        assert norm == pytest.approx(expected, rel=1e-4)  # float32 sums (the probe: float64); per shard: ~30% off


@pytest.mark.parametrize('family', list(FAMILIES))
def test_fsdp_parameter_groups_are_ddps(runs, family):
    """Each parameter's optimizer settings (lr, weight decay, ...) under FSDP, by name, equal those DDP's
    constructor gives the unsharded model: mmengine's build_optim_wrapper on the config's model here, and
    the DDP run's own groups where there is one."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    fsdp = result(runs, family, 'fsdp')['groups']
    cfg = Config.fromfile(runs[family, 'config'])
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, dict(cfg.optim_wrapper, type='OptimWrapper'))  # AMP needs a GPU
    reference = groups_by_name(model, wrapper.optimizer.param_groups)
    if family in WITH_DDP:
        assert result(runs, family, 'ddp')['groups'] == reference
    assert fsdp.keys() == reference.keys()
    differ = [name for name in reference if fsdp[name] != reference[name]]
    assert not differ, [(name, fsdp[name], reference[name]) for name in differ[:5]]
    if family not in ('retinanet', 'upernet'):  # the others' recipes (or this test's options) have paramwise rules
        assert len({(g['lr'], g['weight_decay']) for g in reference.values()}) > 1, 'the rules make groups'


@pytest.mark.parametrize('family', WITH_DDP)
def test_fsdp_trains_as_ddp_with_gradient_clipping(runs, family):
    """With clipping on (max_norm below the gradient's norm: every step clips), FSDP logs DDP's grad_norm and
    ends with DDP's weights. Not bit for bit: FSDP reduces each rank's gradient shard by shard and sums the
    squares of shards, DDP of whole tensors, so gradients and norms differ by float32 rounding. AdamW's first
    steps move a weight by about its lr whatever the gradient's size, so where the two ranks' gradients nearly
    cancel, rounding can change that step's sign: a few elements in a thousand at most (Mask2Former: 4 of
    262,144 once, by 1.1e-5). Clipping each rank's shard by its own norm instead changes the step of nearly
    every element (issue: all 190 Mask R-CNN tensors) and the logged norm by ~30%."""
    fsdp, ddp = result(runs, family, 'fsdp'), result(runs, family, 'ddp')
    clip = [r['grad_norm'] for r in ddp['iterations']]
    assert all(norm > 0.1 for norm in clip), 'clipping acts in every step (max_norm <= 0.1 here)'
    for a, b in zip([r['grad_norm'] for r in fsdp['iterations']], clip):
        assert a == pytest.approx(b, rel=1e-5)
    assert fsdp['after'].keys() == ddp['after'].keys()
    for key, value in ddp['after'].items():
        difference = (fsdp['after'][key].double() - value.double()).abs()
        outliers = int((difference > 1e-5).sum())
        assert outliers <= value.numel() // 1000, \
            f'{key}: {outliers} of {value.numel()} elements differ by more than 1e-5 (up to {difference.max():.3g})'
        if key in ddp['groups']:  # a parameter: an AdamW step moves it by about its lr at most (x1.5: margin)
            assert difference.max() <= 2 * ITERS * 1.5 * ddp['groups'][key]['lr'], key
    moved = [k for k, v in ddp['after'].items() if v.is_floating_point() and not torch.equal(v, ddp['before'][k])]
    assert len(moved) > len(ddp['after']) // 2, 'the compared weights are ones that training moved'
