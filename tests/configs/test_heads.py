"""Cascade Mask R-CNN, DINO and Mask2Former configs with DaViT: each builds for its scope, carries its zoo
recipe, and its optimizer param groups are what the header promises (checked per parameter, against sets and
layer ids worked out here from the module types and the DaViT layout, not from the constructors)."""
import re
from pathlib import Path

import pytest
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import mmdavit  # noqa: F401  (registers DaViT and the layer-decay constructor)
import mmdavit.engine.layer_decay as layer_decay

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
ARCH = {'t': 'tiny', 's': 'small', 'b': 'base'}
DEPTHS = {'t': (1, 1, 3, 1), 's': (1, 1, 9, 1), 'b': (1, 1, 9, 1)}
DIMS = {'t': 96, 's': 96, 'b': 128}
CASCADE = [f'detection/cascade_maskrcnn_davit_{v}_3x' for v in 'tsb']
DINO = [f'detection/dino_4scale_davit_{v}_12e' for v in 'tsb'] + ['detection/dino_5scale_davit_b_12e']
MASK2FORMER = [f'detection/mask2former_davit_{v}_lsj_50e_coco{task}' for task in ('', '_panoptic') for v in 'tsb'] + [
    f'segmentation/mask2former_davit_{v}_160k_ade20k' for v in 'tsb']
LRD = ['detection/dino_4scale_davit_t_12e_lrd', 'detection/mask2former_davit_t_lsj_50e_coco_lrd',
       'detection/mask2former_davit_t_lsj_50e_coco_panoptic_lrd', 'segmentation/mask2former_davit_t_160k_ade20k_lrd']
EMBEDDINGS = ('query_embed', 'query_feat', 'level_embed')  # Mask2Former's, not decayed in the zoo
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


def load(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / f'{name}.py'))


def variant(name: str) -> str:
    return re.search(r'_davit_([tsb])_', name).group(1)


def build(cfg: Config) -> nn.Module:
    scope = cfg.default_scope
    __import__(f'{scope}.utils', fromlist=['register_all_modules']).register_all_modules(init_default_scope=False)
    models = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(scope):
        return models.build(cfg.model)


def build_groups(cfg: Config, model: nn.Module) -> dict:
    """``{parameter name: its param group}``; AMP becomes a plain wrapper (AmpOptimWrapper needs a GPU)."""
    optim_cfg = cfg.optim_wrapper.copy()
    optim_cfg.type = 'OptimWrapper'
    optim_cfg.pop('loss_scale', None)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        optimizer = build_optim_wrapper(model, optim_cfg).optimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    return {name: group_of[id(p)] for name, p in model.named_parameters()}


def expected_layer_id(name: str, depths) -> int:
    """DaViT layer ids as the README defines them: stem 0, each spatial + channel layer one id, a downsample
    with the first layer it feeds, an output norm with its stage's last layer, everything else on top."""
    top = sum(depths) + 1
    parts = name.split('.')
    if parts[0] != 'backbone':
        return top
    if parts[1] == 'stem':
        return 0
    if parts[1] == 'stages':
        stage = int(parts[2])
        block = int(parts[4]) if parts[3] == 'blocks' else 0
        return sum(depths[:stage]) + block + 1
    return sum(depths[:int(parts[1][len('norm'):]) + 1])  # norm{i}


def norm_param_names(model: nn.Module, prefix: str) -> set:
    return {f'{module_name}.{p}' for module_name, module in model.named_modules()
            if module_name.startswith(prefix) and isinstance(module, NORMS) for p, _ in module.named_parameters()}


def embedding_param_names(model: nn.Module) -> set:
    return {name for name, _ in model.named_parameters() if name.split('.')[-2] in EMBEDDINGS}


@pytest.mark.parametrize('name', CASCADE)
def test_cascade_recipe_and_monotone_layer_lrs(name):
    cfg = load(name)
    v = variant(name)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 2e-4, 0.05)
    assert cfg.train_cfg.max_epochs == 36
    assert [s.milestones for s in cfg.param_scheduler if s.type == 'MultiStepLR'] == [[27, 33]]
    heads = cfg.model.roi_head.bbox_head
    assert len(heads) == 3 and all(
        (h.num_shared_convs, h.num_shared_fcs, h.loss_bbox.type) == (4, 1, 'GIoULoss') for h in heads)
    assert any(t.type == 'RandomChoice' for t in cfg.train_dataloader.dataset.pipeline)  # DETR-style ms + crop
    assert cfg.model.neck.in_channels == [DIMS[v] * 2**i for i in range(4)]

    model = build(cfg)
    assert type(model).__name__ == 'CascadeRCNN' and tuple(model.backbone.depths) == DEPTHS[v]
    by_name = build_groups(cfg, model)
    top = sum(DEPTHS[v]) + 1  # 7 for T (as ConvNeXt-T in mmdet), 13 for S / B
    lr_of_layer = {}
    for param_name, group in by_name.items():
        layer_id = expected_layer_id(param_name, DEPTHS[v])
        assert group['lr'] == pytest.approx(2e-4 * 0.7**(top - layer_id), rel=1e-9), param_name
        param = dict(model.named_parameters())[param_name]
        assert group['weight_decay'] == (0.0 if param.ndim == 1 else 0.05), param_name
        lr_of_layer[layer_id] = group['lr']
    lrs = [lr_of_layer[i] for i in sorted(lr_of_layer)]
    assert sorted(lr_of_layer) == list(range(top + 1))
    assert all(lower < upper for lower, upper in zip(lrs, lrs[1:]))  # strictly rising towards the heads


@pytest.mark.parametrize('name', DINO)
def test_dino_recipe_and_backbone_lr(name):
    cfg = load(name)
    v = variant(name)
    five = '5scale' in name
    assert cfg.model.type == 'DINO' and cfg.model.neck.type == 'ChannelMapper'
    assert tuple(cfg.model.backbone.out_indices) == ((0, 1, 2, 3) if five else (1, 2, 3))
    stages = range(4) if five else range(1, 4)
    assert cfg.model.neck.in_channels == [DIMS[v] * 2**i for i in stages]
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.1, norm_type=2)
    assert cfg.train_cfg.max_epochs == 12

    model = build(cfg)
    # the channel mapper really takes what the backbone emits
    assert [conv.conv.in_channels for conv in model.neck.convs] == [DIMS[v] * 2**i for i in stages]
    levels = 5 if five else 4
    assert model.num_feature_levels == levels == len(model.neck.convs) + len(model.neck.extra_convs or [])
    assert model.encoder.layers[0].self_attn.num_levels == model.decoder.layers[0].cross_attn.num_levels == levels
    for param_name, group in build_groups(cfg, model).items():
        lr = 1e-5 if param_name.startswith('backbone.') else 1e-4
        assert (group['lr'], group['weight_decay']) == (pytest.approx(lr, rel=1e-9), 1e-4), param_name


@pytest.mark.parametrize('name', MASK2FORMER)
def test_mask2former_no_decay_set_is_davit_norms_plus_embeddings(name):
    cfg = load(name)
    v = variant(name)
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=0.01, norm_type=2)
    assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay) == (1e-4, 0.05)
    head = cfg.model.get('panoptic_head') or cfg.model.decode_head
    assert head.in_channels == [DIMS[v] * 2**i for i in range(4)]

    model = build(cfg)
    by_name = build_groups(cfg, model)
    no_decay = {n for n, g in by_name.items() if g['weight_decay'] == 0}
    assert all(g['weight_decay'] == 0.05 for n, g in by_name.items() if n not in no_decay)
    backbone_norms = norm_param_names(model, 'backbone.')
    # stem, 3 downsamples, norm1 + norm2 of 2 blocks per layer, 4 output norms; a weight and a bias each
    assert len(backbone_norms) == 2 * (1 + 3 + 4 * sum(DEPTHS[v]) + 4)
    assert {n for n in no_decay if n.startswith('backbone.')} == backbone_norms
    # outside the backbone: the zoo's embeddings and (norm_decay_mult=0) the heads' norm layers
    embeddings = embedding_param_names(model)
    assert len(embeddings) == 3
    assert {n for n in no_decay if not n.startswith('backbone.')} == embeddings | (
        norm_param_names(model, '') - backbone_norms)
    for param_name, group in by_name.items():
        lr = 1e-5 if param_name.startswith('backbone.') else 1e-4
        assert group['lr'] == pytest.approx(lr, rel=1e-9), param_name


@pytest.mark.parametrize('name', LRD)
def test_lrd_custom_keys_on_top_of_layer_decay_and_logged_table(name, monkeypatch):
    cfg, plain = load(name), load(name[:-len('_lrd')])
    assert cfg.model == plain.model and cfg.optim_wrapper.optimizer == plain.optim_wrapper.optimizer
    assert cfg.optim_wrapper.clip_grad == plain.optim_wrapper.clip_grad
    assert [h.type for h in cfg.custom_hooks] == ['mmdavit.LayerDecayLRHook']
    messages = []
    monkeypatch.setattr(layer_decay, 'print_log', lambda msg, **kwargs: messages.append(msg))
    model = build(cfg)
    by_name = build_groups(cfg, model)
    base_lr, base_wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    params = dict(model.named_parameters())
    if 'dino' in name:
        no_decay = set()  # the zoo's DINO decays every parameter
    else:  # DaViT's norms and the embeddings as in the plain config; outside the backbone every 1-D parameter
        no_decay = norm_param_names(model, 'backbone.') | embedding_param_names(model) | {
            n for n, p in params.items() if p.ndim == 1 and not n.startswith('backbone.')}
    for param_name, group in by_name.items():
        layer_id = expected_layer_id(param_name, DEPTHS['t'])
        lr_mult = 0.1 if param_name.startswith('backbone.') else 1.0
        assert group['layer_id'] == layer_id, param_name
        assert group['lr'] == pytest.approx(base_lr * 0.9**(7 - layer_id) * lr_mult, rel=1e-9), param_name
        assert group['weight_decay'] == (0.0 if param_name in no_decay else base_wd), param_name

    # the logged table: one row per group with the group's own numbers
    table = messages[-1].splitlines()
    groups = list({id(g): g for g in by_name.values()}.values())
    rows = [line.split() for line in table[2:]]
    custom_keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert len(rows) == len(groups)
    for row in rows:
        group = next(g for g in groups if g['group_name'] == row[0])
        layer_id = int(row[1])
        key = re.search(r'\[(.+)\]$', row[0])  # the group's custom key, from the config
        lr_mult = custom_keys[key.group(1)].get('lr_mult', 1.0) if key else 1.0
        assert float(row[2]) == pytest.approx(0.9**(7 - layer_id), rel=1e-3)
        assert float(row[3]) == pytest.approx(base_lr * 0.9**(7 - layer_id) * lr_mult, rel=1e-3)
        assert float(row[4]) == pytest.approx(group['weight_decay'])
        assert int(row[5]) == len(group['params'])
    assert sum(int(row[5]) for row in rows) == len(params)


@pytest.mark.parametrize('name', CASCADE + DINO + MASK2FORMER)
def test_weights_runner_and_checkpoint_hook_as_the_paper_configs(name):
    cfg = load(name)
    checkpoint = f'hf-hub://timm/davit_{ARCH[variant(name)]}.msft_in1k'
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=checkpoint)
    assert cfg.model.backbone.type == 'mmdavit.DaViT' and cfg.model.backbone.arch == ARCH[variant(name)]
    assert cfg.custom_imports == dict(imports=['mmdavit'], allow_failed_imports=False)
    assert cfg.runner_type == 'mmdavit.DaViTRunner'
    assert cfg.default_hooks.checkpoint.type == 'mmdavit.AtomicCheckpointHook'


def test_get_flops_all_covers_every_head_config():
    from tests.tools.test_get_flops import get_flops
    assert sorted(Path(p).stem for p in get_flops.HEAD_CONFIGS) == sorted(
        name.split('/')[1] for name in CASCADE + DINO + MASK2FORMER)


@pytest.mark.parametrize('name,out_indices', [('detection/dino_4scale_davit_t_12e', (1, 2, 3)),
                                              ('detection/mask2former_davit_t_lsj_50e_coco', (0, 1, 2, 3)),
                                              ('segmentation/mask2former_davit_t_160k_ade20k', (0, 1, 2, 3))])
def test_get_flops_traces_the_transformer_heads(name, out_indices):
    from tests.tools.test_get_flops import get_flops, hand_count
    shape = (256, 320)  # DINO's two-stage query selection needs >= 900 encoder tokens
    row = get_flops.measure(str(CONFIGS / f'{name}.py'), shape)
    assert row.shape == shape
    assert row.backbone_flops == pytest.approx(hand_count(shape, out_indices=out_indices), rel=5e-3)
    assert row.flops > 1.5 * row.backbone_flops  # the deformable encoder / pixel decoder and decoders on top


def test_metafiles_list_every_head_config():
    import yaml
    models = [m for folder in ('detection', 'segmentation')
              for m in yaml.safe_load((CONFIGS / folder / 'metafile.yml').read_text())['Models']]
    listed = {m['Config'] for m in models}
    assert {f'configs/{name}.py' for name in CASCADE + DINO + MASK2FORMER} <= listed
    assert all((CONFIGS.parent / config).is_file() for config in listed)
    assert all(Path(m['Config']).stem == m['Name'] for m in models)
