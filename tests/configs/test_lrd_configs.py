"""The `_lrd` configs switch layer decay on and train on synthetic data with per-layer LRs logged."""
import json
from pathlib import Path

import pytest
from mmengine.config import Config

import mmdavit  # noqa: F401
from mmdavit.registry import RUNNERS
from tests.configs.backbone_probe import assert_backbone_learned
from tests.configs.tiny_runs import detection_overrides, make_tiny_data, segmentation_overrides

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


@pytest.mark.parametrize('name', ['detection/maskrcnn_davit_t_lrd', 'segmentation/upernet_davit_t_lrd'])
def test_lrd_config_only_adds_layer_decay(name):
    lrd = Config.fromfile(str(CONFIGS / f'{name}.py'))
    plain = Config.fromfile(str(CONFIGS / f'{name[:-4]}.py'))
    assert lrd.optim_wrapper.constructor == 'mmdavit.DaViTLayerDecayOptimWrapperConstructor'
    assert lrd.optim_wrapper.paramwise_cfg == dict(decay_rate=0.9, decay_type='layer_wise')
    assert [h.type for h in lrd.custom_hooks] == ['mmdavit.LayerDecayLRHook']
    assert lrd.optim_wrapper.optimizer == plain.optim_wrapper.optimizer
    assert lrd.model == plain.model and lrd.param_scheduler == plain.param_scheduler


@pytest.mark.parametrize('name,overrides', [('detection/maskrcnn_davit_t_lrd_synthetic', detection_overrides),
                                            ('segmentation/upernet_davit_t_lrd_synthetic', segmentation_overrides)])
def test_lrd_synthetic_config_trains_and_logs_layer_lrs(tmp_path, monkeypatch, name, overrides):
    data = make_tiny_data(tmp_path / 'data')
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(str(CONFIGS / f'{name}.py'))
    extra = tmp_path / 'overrides.py'
    extra.write_text(overrides(data['coco' if 'maskrcnn' in name else 'ade']))
    cfg.merge_from_dict(Config.fromfile(str(extra)).to_dict())
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = f'lrd_{tmp_path.name}'
    cfg.visualizer.name = f'visualizer_{tmp_path.name}'  # mmdet's 'visualizer' instance would outlive the test
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='BackboneProbe')]
    RUNNERS.build(cfg).train()
    assert_backbone_learned(tmp_path / 'work', steps=2)  # every layer, however small its decayed lr
    records = [json.loads(line) for line in next((tmp_path / 'work').glob('*/vis_data/scalars.json')).open()]
    train = [r for r in records if 'layer_0_lr' in r]
    assert train, 'the hook logged no per-layer learning rate'
    for record in train:
        # DaViT-T: stem 0, layers 1..6, neck and heads 7 at the full lr.
        assert record['layer_0_lr'] == pytest.approx(record['head_lr'] * 0.9**7, rel=1e-6)
        assert record['layer_6_lr'] == pytest.approx(record['head_lr'] * 0.9, rel=1e-6)
        assert record['head_lr'] == pytest.approx(cfg.optim_wrapper.optimizer.lr, rel=1e-6)  # constant schedule
        assert all(v == v for k, v in record.items() if k.startswith('loss'))  # finite, not NaN
