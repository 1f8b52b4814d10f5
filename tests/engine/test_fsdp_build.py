"""``DaViTFSDPStrategy`` in one process: what it builds before any rank is started."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmdavit.engine import DaViTFSDPStrategy

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


def test_dino_builds_under_the_fsdp_strategy():
    """mmdet's DINO writes share_pred_layer, num_pred_layer and as_two_stage into its bbox_head config, then
    refuses a config that has them: the strategy's second build (the weightless twin for checkpoint checks)
    must start from an untouched copy."""
    cfg = Config.fromfile(str(CONFIGS / 'detection/dino_4scale_davit_t_12e_synthetic.py'))
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.arch = dict(embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    cfg.model.neck.in_channels = [64, 128, 256]
    strategy = DaViTFSDPStrategy()
    model = strategy.build_model(cfg.model)
    assert type(model).__name__ == type(strategy.unsharded_twin).__name__ == 'DINO'
    names = [name for name, _ in model.named_parameters()]
    assert names == [name for name, _ in strategy.unsharded_twin.named_parameters()]


def test_use_orig_params_false_is_refused():
    with pytest.raises(ValueError, match='use_orig_params=True'):
        DaViTFSDPStrategy(model_wrapper=dict(use_orig_params=False))
