"""The Florence-2 configs: what each promises in its header, the towers' sizes, and a synthetic training run."""
import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import mmdavit  # noqa: F401
from mmdavit.models import DaViT
from mmdavit.registry import RUNNERS
from tests.configs.backbone_probe import assert_backbone_learned
from tests.configs.test_configs import build_model
from tests.configs.tiny_runs import detection_overrides, make_tiny_data

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
# (config, hub repo, tower params without the output norms: Florence-2's published tower sizes)
FLORENCE2 = {
    'detection/maskrcnn_florence2_base': ('microsoft/Florence-2-base', 90_368_000),
    'detection/maskrcnn_florence2_base_3x': ('microsoft/Florence-2-base', 90_368_000),
    'detection/maskrcnn_florence2_large': ('microsoft/Florence-2-large', 360_632_320),
    'segmentation/upernet_florence2_base': ('microsoft/Florence-2-base', 90_368_000),
}

# DaViT's rates: detection 0.1 (1x) / 0.2 (3x), UperNet 0.3; the large tower 0.2 on 1x.
DROP_PATH = {'detection/maskrcnn_florence2_base': 0.1, 'detection/maskrcnn_florence2_base_3x': 0.2,
             'detection/maskrcnn_florence2_large': 0.2, 'segmentation/upernet_florence2_base': 0.3}


def load(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / f'{name}.py'))


@pytest.mark.parametrize('name', sorted(FLORENCE2))
def test_florence2_config_recipe(name):
    cfg = load(name)
    repo, tower_params = FLORENCE2[name]
    backbone = cfg.model.backbone
    assert backbone.type == 'mmdavit.DaViT'
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'hf-hub://{repo}')
    assert backbone.get('window_size') is None  # the arch's window 12 is kept
    assert backbone.get('with_cp', False) == name.endswith('large')
    assert backbone.drop_path_rate == DROP_PATH[name]
    assert cfg.optim_wrapper.constructor == 'mmdavit.DaViTLayerDecayOptimWrapperConstructor'
    assert cfg.optim_wrapper.paramwise_cfg == dict(decay_rate=0.9, decay_type='layer_wise')
    assert [h.type for h in cfg.custom_hooks] == ['mmdavit.LayerDecayLRHook']
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'

    with torch.device('meta'):  # the large tower is 1.4 GB in fp32: count its parameters without storage
        tower = DaViT(**{k: v for k, v in backbone.items() if k not in ('type', 'init_cfg')})
    assert tower.arch['window_size'] == 12
    assert tower.arch['downsample'] == 'overlap' and tower.arch['channel_attention'] == 'v2'
    norms = sum(p.numel() for n, p in tower.named_parameters() if n.startswith('norm'))
    assert sum(p.numel() for p in tower.parameters()) - norms == tower_params
    channels = [tower.embed_dims[i] for i in range(4)]
    if name.startswith('detection'):
        assert cfg.model.neck.in_channels == channels
    else:
        assert cfg.model.decode_head.in_channels == channels
        assert cfg.model.auxiliary_head.in_channels == channels[2]


def test_florence2_3x_changes_only_the_schedule():
    one, three = load('detection/maskrcnn_florence2_base'), load('detection/maskrcnn_florence2_base_3x')
    assert three.train_cfg.max_epochs == 36 and three.param_scheduler[1].milestones == [27, 33]
    one.model.backbone.drop_path_rate = 0.2
    assert one.model == three.model and one.optim_wrapper == three.optim_wrapper


def test_florence2_base_detector_builds():
    model = build_model(load('detection/maskrcnn_florence2_base'))
    feats = model.backbone(torch.rand(1, 3, 67, 93))
    assert [f.shape[1] for f in feats] == [128, 256, 512, 1024]
    assert [f.shape[2:] for f in feats] == [(17, 24), (9, 12), (5, 6), (3, 3)]


@pytest.mark.slow
def test_florence2_synthetic_config_trains_and_loss_falls(tmp_path, monkeypatch):
    data = make_tiny_data(tmp_path / 'data')
    monkeypatch.chdir(tmp_path)
    cfg = load('detection/maskrcnn_florence2_base_synthetic')
    assert cfg.model.backbone.arch == 'florence2-base' and cfg.model.backbone.init_cfg is None
    extra = tmp_path / 'overrides.py'
    # Four images, batch 2, six epochs over the same data from a fixed seed: the loss has to fall. No
    # validation (the demo config's evaluation is tested with the DaViT-T twin; the tower is what is new here).
    extra.write_text(detection_overrides(data['coco']) + "train_cfg = dict(max_epochs=6)\n"
                     "param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=12)]\n"
                     "default_hooks = dict(checkpoint=dict(interval=6))\n"
                     "randomness = dict(seed=0)\n")
    cfg.merge_from_dict(Config.fromfile(str(extra)).to_dict())
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.work_dir = str(tmp_path / 'work')
    cfg.visualizer.name = f'visualizer_{tmp_path.name}'  # mmdet's 'visualizer' instance would outlive the test
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='BackboneProbe')]
    RUNNERS.build(cfg).train()
    records = [json.loads(line) for line in next((tmp_path / 'work').glob('*/vis_data/scalars.json')).open()]
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) >= 2, records
    assert losses[-1] < 0.95 * losses[0], losses
    # The loss falls with heads alone too: the tower's every layer must have had gradients and moved.
    assert_backbone_learned(tmp_path / 'work', steps=12)
    layer_lrs = [r for r in records if 'layer_0_lr' in r]
    assert layer_lrs and layer_lrs[0]['layer_0_lr'] == pytest.approx(layer_lrs[0]['head_lr'] * 0.9**13, rel=1e-6)


def test_metafiles_list_the_florence2_configs():
    import yaml
    listed = {m['Config'] for folder in ('detection', 'segmentation')
              for m in yaml.safe_load((CONFIGS / folder / 'metafile.yml').read_text())['Models']
              if m['In Collection'] == 'DaViT-Florence2'}
    assert listed == {f'configs/{name}.py' for name in FLORENCE2}
