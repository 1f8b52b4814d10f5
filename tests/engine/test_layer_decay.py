"""DaViTLayerDecayOptimWrapperConstructor: exact lr / weight decay of named parameters inside Mask R-CNN,
UperNet and an mmpretrain ImageClassifier, registry names from every scope, custom_keys as mmengine applies
them, schedulers, options, errors."""
import subprocess
import sys
from functools import lru_cache

import pytest
import torch.nn as nn
from mmengine.hub import get_config
from mmengine.optim import DefaultOptimWrapperConstructor, build_optim_wrapper
from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR, PolyLR
from mmengine.registry import MODELS, DefaultScope

import mmdavit.engine.layer_decay as layer_decay
from mmdavit.engine.hooks import decay_ratio_problem
from mmdavit.models import DaViT
from tests.conftest import requires_openmmlab

ARCH = dict(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
BACKBONE = dict(type='mmdavit.DaViT', arch=ARCH, window_size=4, drop_path_rate=0.0)
MAX_ID = 6  # stem 0, DaViT layers 1..5, neck and heads 6
BASE_LR, BASE_WD, RATE = 1e-4, 0.05, 0.9
NAME = 'DaViTLayerDecayOptimWrapperConstructor'

# parameter -> (layer id, gets weight decay), worked out from the DaViT layout by hand
BACKBONE_EXPECTED = {
    'backbone.stem.conv.weight': (0, True),
    'backbone.stem.conv.bias': (0, False),
    'backbone.stem.norm.weight': (0, False),
    'backbone.stages.0.blocks.0.spatial.cpe1.proj.weight': (1, True),  # first block
    'backbone.stages.0.blocks.0.spatial.attn.qkv.weight': (1, True),
    'backbone.stages.0.blocks.0.spatial.attn.qkv.bias': (1, False),
    'backbone.stages.1.downsample.norm.weight': (2, False),  # downsample goes with the stage it feeds
    'backbone.stages.2.downsample.conv.weight': (3, True),
    'backbone.stages.2.blocks.1.channel.attn.proj.weight': (4, True),
    'backbone.stages.3.blocks.0.channel.mlp.fc2.weight': (5, True),  # last block
    'backbone.stages.3.blocks.0.channel.norm2.bias': (5, False),
    'backbone.norm3.weight': (5, False),  # output norm goes with its stage
}
DENSE_EXPECTED = {'backbone.norm0.bias': (1, False), 'backbone.norm2.weight': (4, False)}
EXPECTED = {
    'mmdet': {
        'neck.lateral_convs.0.conv.weight': (MAX_ID, True),
        'neck.fpn_convs.3.conv.bias': (MAX_ID, False),
        'rpn_head.rpn_conv.weight': (MAX_ID, True),
        'roi_head.bbox_head.fc_cls.weight': (MAX_ID, True),
        'roi_head.bbox_head.fc_cls.bias': (MAX_ID, False),
        'roi_head.mask_head.conv_logits.weight': (MAX_ID, True),
    },
    'mmseg': {
        'decode_head.conv_seg.weight': (MAX_ID, True),
        'decode_head.bottleneck.conv.weight': (MAX_ID, True),
        'decode_head.bottleneck.bn.weight': (MAX_ID, False),
        'auxiliary_head.conv_seg.bias': (MAX_ID, False),
    },
    'mmpretrain': {
        'head.fc.weight': (MAX_ID, True),
        'head.fc.bias': (MAX_ID, False),
    },
}


@lru_cache(maxsize=None)
def build_model(scope: str) -> nn.Module:
    """A small DaViT inside Mask R-CNN (mmdet), UperNet (mmseg) or an ImageClassifier (mmpretrain)."""
    if scope == 'mmdet':
        cfg = get_config('mmdet::_base_/models/mask-rcnn_r50_fpn.py').model
        cfg.backbone = dict(BACKBONE)
        cfg.neck.in_channels = [32, 64, 128, 256]
    elif scope == 'mmseg':
        cfg = get_config('mmseg::_base_/models/upernet_r50.py').model
        cfg.pretrained = None
        cfg.backbone = dict(BACKBONE)
        cfg.decode_head.update(in_channels=[32, 64, 128, 256], channels=32)
        cfg.auxiliary_head.update(in_channels=128, channels=16)
    else:
        cfg = dict(type='ImageClassifier', backbone=dict(BACKBONE, out_indices=(3, )),
                   neck=dict(type='GlobalAveragePooling'),
                   head=dict(type='LinearClsHead', num_classes=10, in_channels=256))
    with DefaultScope.overwrite_default_scope(scope):
        return MODELS.build(cfg)


class ToyModel(nn.Module):

    def __init__(self, **backbone_kwargs):
        super().__init__()
        self.backbone = DaViT(arch=ARCH, window_size=4, **backbone_kwargs)
        self.head = nn.Linear(256, 4)


def optim_cfg(constructor: str = f'mmdavit.{NAME}', **paramwise) -> dict:
    return dict(optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD), constructor=constructor,
                paramwise_cfg=dict(dict(decay_rate=RATE), **paramwise))


def groups_by_param(model: nn.Module, optim_wrapper) -> dict:
    group_of = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    return {name: group_of.get(id(p)) for name, p in model.named_parameters()}


@requires_openmmlab
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_exact_lr_and_weight_decay(scope):
    model = build_model(scope)
    with DefaultScope.overwrite_default_scope(scope):
        optim_wrapper = build_optim_wrapper(model, optim_cfg())
    by_name = groups_by_param(model, optim_wrapper)
    expected = {**BACKBONE_EXPECTED, **EXPECTED[scope], **(DENSE_EXPECTED if scope != 'mmpretrain' else {})}
    for name, (layer_id, decays) in expected.items():
        group = by_name[name]
        assert group['layer_id'] == layer_id, name
        assert group['lr'] == pytest.approx(BASE_LR * RATE**(MAX_ID - layer_id), rel=1e-12), name
        assert group['lr_scale'] == pytest.approx(RATE**(MAX_ID - layer_id), rel=1e-12), name
        assert group['weight_decay'] == (BASE_WD if decays else 0.0), name
    # every trainable parameter is in exactly one group; names are unique and readable
    groups = optim_wrapper.optimizer.param_groups
    assert all(group is not None for group in by_name.values())
    assert sum(len(g['params']) for g in groups) == len(by_name)
    assert len({g['group_name'] for g in groups}) == len(groups)
    assert {g['group_name'] for g in groups} >= {'layer_0_decay', 'layer_0_no_decay', 'head_decay', 'head_no_decay'}
    assert [g['layer_id'] for g in groups] == sorted(g['layer_id'] for g in groups)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain', 'mmengine'])
def test_constructor_resolves_from_every_scope(scope):
    model = ToyModel()
    with DefaultScope.overwrite_default_scope(scope):
        optim_wrapper = build_optim_wrapper(model, optim_cfg())
    assert {g['layer_id'] for g in optim_wrapper.optimizer.param_groups} == set(range(MAX_ID + 1))


def test_registered_in_the_mmdavit_scope_only():
    """Importing mmdavit adds no global names to mmengine's root registries; ``mmdavit.``-prefixed names
    resolve from the roots (a fresh process, so that nothing else has imported the engine yet)."""
    code = ('import mmdavit\n'
            'from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS as C\n'
            f'assert "{NAME}" not in C.module_dict and "LayerDecayLRHook" not in HOOKS.module_dict\n'
            f'assert C.get("{NAME}") is None and HOOKS.get("LayerDecayLRHook") is None\n'
            f'assert C.get("mmdavit.{NAME}").__name__ == "{NAME}"\n'
            'assert HOOKS.get("mmdavit.LayerDecayLRHook").__name__ == "LayerDecayLRHook"\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_stage_wise():
    model = ToyModel()
    optim_wrapper = build_optim_wrapper(model, optim_cfg(decay_type='stage_wise', num_layers=6))
    by_name = groups_by_param(model, optim_wrapper)
    # stem 0, stage i (downsample, blocks, norm{i}) i + 1, head 5
    for name, stage_id in [('backbone.stem.conv.weight', 0), ('backbone.stages.0.blocks.0.spatial.mlp.fc1.weight', 1),
                           ('backbone.stages.2.downsample.conv.weight', 3), ('backbone.norm2.weight', 3),
                           ('backbone.stages.3.blocks.0.channel.attn.qkv.weight', 4), ('head.weight', 5)]:
        assert by_name[name]['layer_id'] == stage_id, name
        assert by_name[name]['lr'] == pytest.approx(BASE_LR * RATE**(5 - stage_id), rel=1e-12), name


def test_custom_keys_multiply_on_top_and_flat_decay_switch():
    model = ToyModel()
    custom_keys = {'backbone.stem': dict(lr_mult=0.5, decay_mult=0.5), 'head': dict(lr_mult=10.0, betas=(0.8, 0.9))}
    by_name = groups_by_param(model, build_optim_wrapper(model, optim_cfg(custom_keys=custom_keys)))
    stem_conv, stem_norm, head = by_name['backbone.stem.conv.weight'], by_name['backbone.stem.norm.weight'], \
        by_name['head.weight']
    assert stem_conv['lr'] == pytest.approx(BASE_LR * RATE**MAX_ID * 0.5, rel=1e-12)
    assert stem_conv['weight_decay'] == pytest.approx(BASE_WD * 0.5)
    assert stem_norm['weight_decay'] == pytest.approx(BASE_WD * 0.5)  # the key's decay_mult replaces the 1-D rule
    assert stem_conv['group_name'] == 'layer_0_decay_x0.5[backbone.stem]'
    assert head['lr'] == pytest.approx(BASE_LR * 10.0) and head['betas'] == (0.8, 0.9)
    assert by_name['backbone.stages.0.blocks.0.spatial.mlp.fc1.weight']['lr'] == pytest.approx(BASE_LR * RATE**5)
    assert by_name['backbone.stages.0.blocks.0.spatial.mlp.fc1.bias']['weight_decay'] == 0.0  # no key: flat rule

    by_name = groups_by_param(model, build_optim_wrapper(model, optim_cfg(flat_decay_mult=1.0)))
    assert by_name['backbone.norm3.weight']['weight_decay'] == BASE_WD
    assert by_name['head.bias']['weight_decay'] == BASE_WD


@pytest.mark.parametrize('custom_keys', [
    {'.bias': dict(decay_mult=1.0)},  # weight decay back on for biases, as mmengine users write it
    {'norm': dict(decay_mult=0.5), 'backbone.stem': dict(lr_mult=0.1)},  # a key without decay_mult: 1
    {'head': dict(lr_mult=10.0), 'head.bias': dict(decay_mult=0.0, lr_mult=2.0)},  # longest key wins
])
def test_custom_keys_weight_decay_as_mmengine_default_constructor(custom_keys):
    """A parameter matched by a custom key gets exactly the weight decay mmengine's own constructor gives it
    (its decay_mult replaces the 1-D rule); its lr is mmengine's times the layer's decay."""
    model = ToyModel()
    ours = groups_by_param(model, build_optim_wrapper(model, optim_cfg(custom_keys=custom_keys)))
    mmengine_groups = DefaultOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD)),
        dict(flat_decay_mult=0.0, custom_keys=custom_keys))(model).optimizer.param_groups
    theirs = {id(p): g for g in mmengine_groups for p in g['params']}
    for name, param in model.named_parameters():
        reference = theirs[id(param)]
        assert ours[name]['weight_decay'] == pytest.approx(reference['weight_decay'], abs=1e-15), name
        assert ours[name]['lr'] == pytest.approx(reference['lr'] * ours[name]['lr_scale'], rel=1e-12), name
    if '.bias' in custom_keys:
        assert ours['backbone.stem.conv.bias']['weight_decay'] == BASE_WD  # was 0 * decay_mult = 0
        assert ours['backbone.stem.norm.weight']['weight_decay'] == 0.0  # 1-D, no key: flat_decay_mult


def test_frozen_parameters_left_out_and_ddp_unwrapped():
    model = ToyModel(frozen_stages=0)

    class Wrapper(nn.Module):  # what MMDistributedDataParallel looks like to the constructor

        def __init__(self, module):
            super().__init__()
            self.module = module

    optim_wrapper = build_optim_wrapper(Wrapper(model), optim_cfg())
    in_optimizer = {id(p) for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    for name, param in model.named_parameters():
        assert (id(param) in in_optimizer) == param.requires_grad, name
    assert min(g['layer_id'] for g in optim_wrapper.optimizer.param_groups) == 2  # stem and stage 0 frozen


def test_logs_group_table(monkeypatch):
    messages = []
    monkeypatch.setattr(layer_decay, 'print_log', lambda msg, **kwargs: messages.append(msg))
    optim_wrapper = build_optim_wrapper(ToyModel(frozen_stages=0), optim_cfg())
    table = messages[-1].splitlines()
    groups = optim_wrapper.optimizer.param_groups
    assert table[0].startswith(f'{NAME}: layer_wise decay over 7 layer ids of DaViT')
    assert table[1].split() == ['group', 'layer', 'lr_scale', 'lr', 'weight_decay', 'tensors', 'params']
    assert [line.split()[0] for line in table[2:2 + len(groups)]] == [g['group_name'] for g in groups]
    assert table[2 + len(groups)].endswith('frozen tensors (requires_grad=False) left out')
    head = table[1 + len(groups)].split()
    assert head[:5] == ['head_no_decay', '6', '1', '0.0001', '0'] and head[5] == '1'  # head.bias


def test_lr_mult_zero_in_the_table(monkeypatch):
    messages = []
    monkeypatch.setattr(layer_decay, 'print_log', lambda msg, **kwargs: messages.append(msg))
    optim_wrapper = build_optim_wrapper(ToyModel(), optim_cfg(custom_keys={'backbone.stem': dict(lr_mult=0.0)}))
    frozen = [g for g in optim_wrapper.optimizer.param_groups if g.get('lr_mult') == 0]
    rows = {line.split()[0]: line.split() for line in messages[-1].splitlines()[2:]}
    assert [rows[g['group_name']][3] for g in frozen] == ['0']  # one group: the key's decay_mult (1) for all four
    assert messages[-1].splitlines()[-1] == '4 tensors frozen by custom_keys lr_mult=0 (lr 0)'


@pytest.mark.parametrize('main', [
    dict(type=CosineAnnealingLR, T_max=7, eta_min=0.0),
    dict(type=CosineAnnealingLR, T_max=7, eta_min_ratio=0.01),
    dict(type=PolyLR, power=0.9, eta_min=0.0),
])
def test_schedulers_keep_per_group_ratios(main):
    custom_keys = {'head.bias': dict(lr_mult=3.0), 'backbone.stem': dict(lr_mult=0.0)}
    optim_wrapper = build_optim_wrapper(ToyModel(), optim_cfg(custom_keys=custom_keys))
    main = dict(main)
    schedulers = [LinearLR(optim_wrapper, start_factor=0.1, by_epoch=False, begin=0, end=3),
                  main.pop('type')(optim_wrapper, by_epoch=False, begin=3, end=10, **main)]
    groups = optim_wrapper.optimizer.param_groups
    base_lrs = []
    for step in range(10):
        base_lr = optim_wrapper.get_lr()['base_lr'][0]  # the scheduled lr of the top layer
        base_lrs.append(base_lr)
        if step in (0, 2, 3, 6, 9):
            for g in groups:
                assert g['lr'] == pytest.approx(base_lr * g['lr_scale'] * g.get('lr_mult', 1.0), rel=1e-9)
        assert decay_ratio_problem(groups) == ''  # what LayerDecayLRHook checks: no false alarm
        for scheduler in schedulers:
            scheduler.step()
    assert len(set(base_lrs)) >= 8  # the schedule really moved (warmup end and cosine start coincide)


@pytest.mark.parametrize('paramwise, message', [
    (dict(), 'decay_rate is required'),
    (dict(decay_rate=1.5), r'decay_rate must be in \(0, 1\]'),
    (dict(decay_rate=RATE, decay_type='block_wise'), 'decay_type must be one of'),
    (dict(decay_rate=RATE, num_layers=6), 'num_layers=6 does not match DaViT.get_layer_depth'),
    (dict(layer_decay_rate=0.75), 'unknown paramwise_cfg keys'),
    (dict(decay_rate=RATE, norm_decay_mult=0.0),
     r"\['norm_decay_mult'\] are replaced here by flat_decay_mult .* custom_keys, whose decay_mult replaces "
     r"flat_decay_mult .*custom_keys=\{'.bias': dict\(decay_mult=1.0\)\}"),
    (dict(decay_rate=RATE, bias_decay_mult=1.0), r"mmengine's \['bias_decay_mult'\] are replaced here"),
    (dict(decay_rate=RATE, custom_keys={'head': dict(lr=1.0)}), 'use lr_mult / decay_mult'),
    (dict(decay_rate=RATE, custom_keys={'head': dict(lr_mult=-1)}), r'lr_mult must be a number >= 0'),
    *[(dict(decay_rate=RATE, custom_keys={'backbone.stem': {field: value}}),
       rf"custom_keys\['backbone.stem'\] sets \['{field}'\], which the constructor sets itself")
      for field, value in [('lr_scale', 1.0), ('layer_id', 6), ('group_name', 'stem'), ('params', []),
                           ('initial_lr', 1e-3)]],
])
def test_config_errors(paramwise, message):
    cfg = dict(optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD), constructor=f'mmdavit.{NAME}',
               paramwise_cfg=paramwise)
    with pytest.raises(ValueError, match=message):
        build_optim_wrapper(ToyModel(), cfg)


def test_model_errors():
    cfg = optim_cfg()
    with pytest.raises(TypeError, match='Linear has no `backbone` module'):
        build_optim_wrapper(nn.Linear(2, 2), cfg)
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r'backbone Linear of Module has no get_layer_depth\(param_name, prefix\)'):
        build_optim_wrapper(model, cfg)
    cfg['optimizer'].pop('weight_decay')
    with pytest.raises(ValueError, match='needs explicit lr and weight_decay'):
        build_optim_wrapper(ToyModel(), cfg)
