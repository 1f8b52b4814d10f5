"""Backbone behaviour: freezing, gradient checkpointing, drop path, layer ids, bad input."""
import pytest
import torch
import torch.utils.checkpoint

from mmdavit.models import DaViT
from mmdavit.models import layers

SMALL = dict(embed_dims=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))


def test_frozen_stages_freeze_and_stay_in_eval():
    model = DaViT(arch=SMALL, frozen_stages=1)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.norm0, model.norm1]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    for module in [model.stages[2], model.stages[3], model.norm2, model.norm3]:
        assert module.training
        assert all(p.requires_grad for p in module.parameters())
    sum(f.sum() for f in model(torch.randn(1, 3, 32, 32))).backward()
    assert model.stem.conv.weight.grad is None
    assert model.stages[1].downsample.conv.weight.grad is None
    assert model.stages[2].downsample.conv.weight.grad is not None


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
