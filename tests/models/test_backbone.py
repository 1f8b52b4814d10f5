"""Backbone behaviour: freezing, gradient checkpointing, drop path, layer ids, bad input, and mmengine's
BaseModule contract (init_cfg as a dict or a list, Pretrained applied last, init_weights once, train() -> self)."""
import pytest
import torch
import torch.utils.checkpoint

from mmdavit.models import DaViT
from mmdavit.models import layers
from tests.models.reference import perturb_
from tests.conftest import requires_openmmlab

SMALL = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3])
def test_frozen_stages_freeze_and_stay_in_eval(frozen_stages):
    model = DaViT(arch=SMALL, frozen_stages=frozen_stages)
    assert model.train() is model  # mmengine / torch contract: train() returns the module
    frozen = [model.stem] * (frozen_stages >= 0)
    frozen += [m for i in range(frozen_stages + 1) for m in (model.stages[i], getattr(model, f'norm{i}'))]
    trainable = [m for i in range(frozen_stages + 1, 4) for m in (model.stages[i], getattr(model, f'norm{i}'))]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    for module in trainable:
        assert module.training
        assert all(p.requires_grad for p in module.parameters())
    features = model(torch.randn(1, 3, 32, 32))
    if trainable:
        sum(f.sum() for f in features).backward()
        assert all(p.grad is None for m in frozen for p in m.parameters())
        assert all(p.grad is not None for m in trainable for p in m.parameters())
    else:
        assert not any(f.requires_grad for f in features)  # all frozen: nothing to train
    # eval() then train() again: the frozen part stays in eval mode.
    assert model.eval() is model and model.train() is model
    assert all(not m.training for m in frozen) and all(m.training for m in trainable)


def test_with_cp_after_frozen_stages_checkpoints_every_trainable_block(monkeypatch):
    """mmdet's habit of freezing early stages and checkpointing the rest: every trainable block is
    checkpointed (the first one's input needs a gradient through the trainable downsample before it)."""
    checkpointed = []
    original = torch.utils.checkpoint.checkpoint

    def recording_checkpoint(function, *args, **kwargs):
        checkpointed.append(function)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(layers.cp, 'checkpoint', recording_checkpoint)
    model = DaViT(arch=SMALL, frozen_stages=1, with_cp=True).train()
    sum(f.sum() for f in model(torch.randn(1, 3, 32, 32))).backward()
    trainable_blocks = [block for stage in model.stages[2:] for layer in stage.blocks
                        for block in (layer.spatial, layer.channel)]
    assert all(any(block is c for c in checkpointed) for block in trainable_blocks)
    assert model.stages[2].blocks[0].spatial.mlp.fc1.weight.grad is not None


class DaViTWithBatchNorm(DaViT):
    """A subclass adding a BatchNorm, the case ``norm_eval`` exists for (DaViT's own norms are LayerNorms)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.extra_norm = torch.nn.BatchNorm2d(8)


@pytest.mark.parametrize('norm_eval', [True, False])
def test_norm_eval_keeps_batch_norms_in_eval_mode(norm_eval):
    model = DaViTWithBatchNorm(arch=SMALL, norm_eval=norm_eval)
    assert model.train() is model
    assert model.extra_norm.training is not norm_eval
    assert model.stages[3].training and model.norm3.training


def test_with_cp_same_outputs_and_gradients(monkeypatch):
    calls = []
    original = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(type(function.attn).__name__)
        return original(function, *args, **kwargs)

    monkeypatch.setattr(layers.cp, 'checkpoint', counting_checkpoint)
    plain = DaViT(arch=SMALL, drop_path_rate=0.0).train()
    checkpointed = DaViT(arch=SMALL, drop_path_rate=0.0, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 45, 38)
    outputs = []
    for model in (plain, checkpointed):
        feats = model(images.clone().requires_grad_())
        sum((f * torch.linspace(0, 1, f.numel()).view_as(f)).sum() for f in feats).backward()
        outputs.append(feats)
    # Both the spatial and the channel block of every layer are checkpointed.
    assert calls == ['WindowAttention', 'ChannelAttention'] * sum(SMALL['depths'])
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b)
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_drop_path_schedule_is_official():
    model = DaViT(arch='tiny', drop_path_rate=0.3)
    # 2 * sum(depths) = 12 blocks, linear from 0 to 0.3; layer j: spatial 2j, channel 2j + 1.
    step = 0.3 / 11
    stage2 = model.stages[2].blocks
    assert model.stages[0].blocks[0].spatial.drop_path.drop_prob == 0.0
    assert model.stages[0].blocks[0].channel.drop_path.drop_prob == pytest.approx(step)
    assert stage2[1].spatial.drop_path.drop_prob == pytest.approx(6 * step)
    assert stage2[1].channel.drop_path.drop_prob == pytest.approx(7 * step)
    assert model.stages[3].blocks[0].channel.drop_path.drop_prob == pytest.approx(0.3)


def test_drop_path_active_only_in_training():
    model = DaViT(arch=SMALL, drop_path_rate=0.5)
    images = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(images), model(images)))
        model.train()
        assert not all(torch.equal(a, b) for a, b in zip(model(images), model(images)))


def test_layer_and_stage_depth():
    model = DaViT(arch='tiny')  # 6 layers -> ids 0 (stem) .. 6, 7 = outside
    assert model.get_layer_depth('backbone.stem.conv.weight', 'backbone.') == (0, 8)
    assert model.get_layer_depth('backbone.stages.0.blocks.0.spatial.attn.qkv.weight', 'backbone.') == (1, 8)
    assert model.get_layer_depth('backbone.stages.2.downsample.conv.weight', 'backbone.') == (3, 8)
    assert model.get_layer_depth('backbone.stages.2.blocks.2.channel.mlp.fc2.bias', 'backbone.') == (5, 8)
    assert model.get_layer_depth('backbone.norm2.weight', 'backbone.') == (5, 8)
    assert model.get_layer_depth('backbone.norm3.weight', 'backbone.') == (6, 8)
    assert model.get_layer_depth('neck.lateral_convs.0.conv.weight', 'backbone.') == (7, 8)
    assert model.get_stage_depth('stages.3.downsample.norm.weight') == (4, 6)
    assert model.get_stage_depth('norm0.bias') == (1, 6)
    assert model.get_stage_depth('decode_head.conv_seg.weight') == (5, 6)
    # Every backbone parameter gets an id below the 'outside' one.
    assert all(model.get_layer_depth(name)[0] < 7 for name, _ in model.named_parameters())


@pytest.mark.parametrize('kwargs,message', [
    (dict(arch='medium'), "Unknown DaViT arch 'medium'; valid names: tiny (t)"),
    (dict(arch=dict(embed_dims=8, depths=(1, 1))), 'lacks'),
    (dict(arch=dict(embed_dims=8, depths=(1, 1), num_heads=(1, ))), '2 depths but 1 num_heads'),
    (dict(window_size=0), 'window_size must be a positive int, got 0'),
    (dict(window_size=-3), 'window_size must be a positive int'),
    (dict(out_indices=(0, 4)), 'out_indices entry 4 is out of range for 4 stages'),
    (dict(out_indices=(-5, )), 'out_indices entry -5 is out of range'),
    (dict(out_indices=(1, -3)), 'name a stage twice'),
    (dict(frozen_stages=4), 'frozen_stages must be in [-1, 3], got 4'),
    (dict(frozen_stages=-2), 'frozen_stages must be in [-1, 3]'),
    (dict(drop_path_rate=1.0), 'drop_path_rate must be in [0, 1)'),
    (dict(arch=dict(embed_dims=10, depths=(1, ), num_heads=(3, ))), 'not divisible by num_heads=3'),
])
def test_bad_config_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        DaViT(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize('shape,message', [
    ((1, 4, 32, 32), 'expects 3 input channels, got 4 (set in_channels=4)'),
    ((3, 32, 32), 'expects a 4-D (B, C, H, W) tensor, got shape (3, 32, 32)'),
    ((0, 3, 32, 32), 'empty input of shape (0, 3, 32, 32)'),
    ((1, 3, 0, 32), 'empty input'),
])
def test_bad_input_errors(shape, message):
    model = DaViT(arch=SMALL)
    with pytest.raises(ValueError) as info:
        model(torch.randn(shape))
    assert message in str(info.value)


def test_in_channels_and_window_override():
    model = DaViT(arch=SMALL, in_channels=4, window_size=5).eval()
    assert model.stages[1].blocks[0].spatial.attn.window_size == 5
    feats = model(torch.randn(1, 4, 23, 17))
    assert [tuple(f.shape[2:]) for f in feats] == [(6, 5), (3, 3), (2, 2), (1, 1)]


# ----------------------------------------------------------------------------------------------- init_cfg
def stem_std(model: DaViT) -> float:
    return model.stem.conv.weight.std().item()


def test_init_cfg_list_of_initialisers():
    """mmpretrain's own DaViT test form. Kaiming (fan_in, linear: std 1/sqrt(3 * 7 * 7) = 0.082) replaces the
    official conv init (std sqrt(2 / fan_out) = 0.050 for this stem) on the convs; Linear layers keep the
    official truncated normal (std 0.02)."""
    model = DaViT(arch=SMALL, init_cfg=[dict(type='Kaiming', layer='Conv2d', mode='fan_in', nonlinearity='linear')])
    model.init_weights()
    assert model.is_init
    assert stem_std(model) == pytest.approx(147**-0.5, rel=0.1)
    assert model.stages[3].blocks[0].channel.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    default = DaViT(arch=SMALL)
    default.init_weights()
    assert stem_std(default) == pytest.approx((2 / (49 * 16))**0.5, rel=0.1)


@pytest.fixture
def backbone_checkpoint(tmp_path):
    """A SMALL DaViT checkpoint in our own key format, without the output norms."""
    source = perturb_(DaViT(arch=SMALL))
    state = {k: v for k, v in source.state_dict().items() if not k.startswith('norm')}
    path = tmp_path / 'small_davit.pth'
    torch.save(state, path)
    return str(path), state


def assert_loaded(model: DaViT, state: dict):
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_init_cfg_list_applies_pretrained_last(backbone_checkpoint):
    """Pretrained is listed first but applied after Constant, as mmengine orders it: every checkpoint tensor
    (LayerNorms included) survives, and Constant shows on the norms the checkpoint lacks."""
    path, state = backbone_checkpoint
    model = DaViT(arch=SMALL, init_cfg=[dict(type='Pretrained', checkpoint=path),
                                        dict(type='Constant', layer='LayerNorm', val=0.5, bias=0.25)])
    model.init_weights()
    assert_loaded(model, state)
    assert torch.all(model.norm2.weight == 0.5) and torch.all(model.norm2.bias == 0.25)


def test_init_weights_runs_once(backbone_checkpoint, log_records):
    path, state = backbone_checkpoint
    model = DaViT(arch=SMALL, init_cfg=dict(type='Pretrained', checkpoint=path))
    assert not model.is_init
    model.init_weights()
    with torch.no_grad():
        model.stem.conv.weight.add_(1.0)  # a change a second initialisation would undo
    changed = model.stem.conv.weight.clone()
    model.init_weights()
    assert torch.equal(model.stem.conv.weight, changed)
    assert any('has been called more than once' in r.getMessage() for r in log_records)


@pytest.mark.parametrize('init_cfg,error,message', [
    ('checkpoint.pth', TypeError, 'init_cfg must be None, a dict or a list of dicts'),
    ([dict(checkpoint='x.pth')], TypeError, 'each with a "type"'),
    (dict(type='Pretrained'), ValueError, 'has no checkpoint'),
    (dict(type='Pretrained', checkpoint='x.pth', prefx='backbone.'), ValueError, "unknown keys ['prefx']"),
])
def test_bad_init_cfg_fails_at_build_time(init_cfg, error, message):
    with pytest.raises(error) as info:
        DaViT(arch=SMALL, init_cfg=init_cfg)
    assert message in str(info.value)


@requires_openmmlab
def test_init_cfg_list_on_a_detector_backbone_in_a_config(backbone_checkpoint, tmp_path):
    """``model.backbone.init_cfg`` of an mmdet config, in list form, through the detector's init_weights."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS as MMDET_MODELS
    from tests.reliability.runs import CONFIGS, SMALL_MODEL
    path, state = backbone_checkpoint
    small = tmp_path / 'small.py'
    small.write_text(f"_base_ = {str(CONFIGS['detection'])!r}\n" + SMALL_MODEL['detection'].replace(
        'embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)', ', '.join(f'{k}={v}' for k, v in SMALL.items())
    ).replace('[32, 64, 128, 256]', '[16, 32, 64, 128]'))
    config = tmp_path / 'with_init_cfg.py'
    config.write_text(f"_base_ = {str(small)!r}\nmodel = dict(backbone=dict(init_cfg=["
                      f"dict(type='Pretrained', checkpoint={path!r}), dict(type='Constant', layer='LayerNorm', "
                      "val=0.5)]))\n")
    cfg = Config.fromfile(str(config))
    init_default_scope('mmdet')
    detector = MMDET_MODELS.build(cfg.model)
    detector.init_weights()
    assert_loaded(detector.backbone, state)
    assert torch.all(detector.backbone.norm0.weight == 0.5)
