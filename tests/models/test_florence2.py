"""Florence-2 vision towers (``arch='florence2-base'`` / ``'florence2-large'``) against timm's ``davit_base_fl``
and a reduced-depth ``davit_huge_fl`` on the same perturbed random weights, our output norms random too.

What differs from classic DaViT: the overlapping 3x3 downsample, channel attention v2 (scaled by the token
count N of the stage map) and window 12. Every CPU fast path holds for them, none is skipped: the no-grad runs
below take the in-place paths, the single-thread runs the bands (channel attention, v1 or v2, is never banded:
it mixes all tokens), and there FlushNegligible is checked to have zeroed entries of v2's logits or softmax.
Measured max abs diffs: 0 at the odd sizes (bitwise equal), 1.7e-5 (base) / 4.2e-5 (huge-shaped) at 384 x 384.
"""
import pytest
import torch

from mmdavit.models import DaViT
from mmdavit.models import fast_paths
from mmdavit.models.davit import ARCH_ZOO, resolve_arch
from mmdavit.models.layers import ChannelAttention, ChannelAttentionV2, OverlapDownsample, PatchDownsample
from tests.models.reference import HUGE_FL_REDUCED, perturb_, timm_davit_fl, timm_fl_to_mmdavit
from tests.models.test_equivalence import TOLERANCE, reference_features, weighted_sum

# Odd sizes pad the stem, the windows and (classic only) the downsample; at 384 x 384 every stage map
# (96, 48, 24, 12) is a multiple of the window, as at Florence-2's own 768 x 768.
ODD_SIZES = [(97, 131), (33, 45), (7, 9)]
WINDOW_MULTIPLE = (384, 384)


def count(model: torch.nn.Module, norms: bool = True) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if norms or not name.startswith('norm'))


def build_pair(reference: torch.nn.Module, arch) -> tuple:
    ours = perturb_(DaViT(arch=arch, drop_path_rate=0.0))  # random output norms: timm has none
    norms = {k: v for k, v in ours.state_dict().items() if k.startswith('norm')}
    ours.load_state_dict({**timm_fl_to_mmdavit(reference.state_dict()), **norms}, strict=True)
    return reference, ours.eval()


@pytest.fixture(scope='module')
def base_pair():
    return build_pair(timm_davit_fl('davit_base_fl'), 'florence2-base')


@pytest.fixture(scope='module')
def huge_pair():
    return build_pair(timm_davit_fl('davit_huge_fl', **HUGE_FL_REDUCED),
                      dict(ARCH_ZOO['florence2-large'], **HUGE_FL_REDUCED))


def max_diffs(actual, expected) -> list:
    assert len(actual) == len(expected) == 4
    diffs = []
    for stage, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f'stage {stage}: {tuple(a.shape)} vs {tuple(e.shape)}'
        diffs.append((a - e).abs().max().item())
    return diffs


def test_names_aliases_and_switches():
    assert resolve_arch('florence2-base') == resolve_arch('FL2-B') == dict(
        embed_dims=128, depths=(1, 1, 9, 1), num_heads=(4, 8, 16, 32), window_size=12, downsample='overlap',
        channel_attention='v2')
    assert resolve_arch('fl2-l') == dict(resolve_arch('florence2-base'), embed_dims=256, num_heads=(8, 16, 32, 64))
    with torch.device('meta'):
        large = DaViT('fl2-l')
    assert all(type(stage.downsample) is OverlapDownsample for stage in large.stages[1:])
    assert large.stages[3].downsample.conv.weight.shape == (2048, 1024, 3, 3)
    assert all(type(layer.channel.attn) is ChannelAttentionV2 and layer.spatial.attn.window_size == 12
               for stage in large.stages for layer in stage.blocks)
    # The classic archs and arch dicts without the switches keep the classic blocks.
    for arch in ('base', dict(embed_dims=16, depths=(1, 1), num_heads=(1, 2))):
        model = DaViT(arch, out_indices=(1, ))
        assert type(model.stages[1].downsample) is PatchDownsample
        assert type(model.stages[0].blocks[0].channel.attn) is ChannelAttention


@pytest.mark.parametrize('arch,message', [
    ('florence-2', "valid names: tiny (t), small (s), base (b), large (l), huge (h), giant (g), "
                   "florence2-base (fl2-b), florence2-large (fl2-l), or a dict"),
    (dict(embed_dims=8, depths=(1, ), num_heads=(1, ), downsample='conv3'),
     "downsample='conv3' is not one of 'patch', 'overlap'"),
    (dict(embed_dims=8, depths=(1, ), num_heads=(1, ), channel_attention=2), "channel_attention=2 is not one of"),
    (dict(embed_dims=8, depths=(1, ), num_heads=(1, ), channel_attn_v2=True), "unknown keys ['channel_attn_v2']"),
])
def test_bad_arch_errors(arch, message):
    with pytest.raises(ValueError) as info:
        DaViT(arch)
    assert message in str(info.value)


def test_param_counts_without_output_norms():
    """The towers as Florence-2 ships them (no output norms); shapes only, on the meta device."""
    with torch.device('meta'):
        base, large = DaViT('florence2-base'), DaViT('florence2-large')
    assert count(base, norms=False) == 90_368_000
    assert count(large, norms=False) == 360_632_320
    assert count(base) - count(base, norms=False) == 2 * (128 + 256 + 512 + 1024)


@pytest.mark.parametrize('size', ODD_SIZES + [WINDOW_MULTIPLE], ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('pair', ['base_pair', 'huge_pair'])
def test_matches_timm(pair, size, request):
    reference, ours = request.getfixturevalue(pair)
    images = torch.randn(1 if size == WINDOW_MULTIPLE else 2, 3, *size)
    with torch.no_grad():
        diffs = max_diffs(ours(images), reference_features(reference, ours, images))
    assert max(diffs) <= TOLERANCE, f'{pair} at {size}: max abs diff per stage {diffs}'


@pytest.fixture
def one_thread_small_bands(monkeypatch):
    """Bands of 64 tokens on one thread: many bands at these sizes, a ragged last one among them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(fast_paths, 'BAND_TOKENS', 64)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def flushed(monkeypatch):
    """Per call of FlushNegligible (forward and backward): how many entries it turned into zeros."""
    counts = []
    zero_negligible = fast_paths._zero_negligible

    def counting(x):
        out = zero_negligible(x)
        counts.append(int((out == 0).sum() - (x == 0).sum()))
        return out

    monkeypatch.setattr(fast_paths, '_zero_negligible', counting)
    return counts


@pytest.mark.parametrize('size', [(97, 131), (33, 45)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_banded_forward_and_backward_match_timm(base_pair, one_thread_small_bands, flushed, size):
    reference, ours = base_pair
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        diffs = max_diffs(ours(images), reference_features(reference, ours, images))
    assert max(diffs) <= TOLERANCE, f'banded no-grad: max abs diff per stage {diffs}'
    assert sum(flushed) > 0, 'FlushNegligible zeroed nothing: this test would not show that it holds for v2'

    ours_input = images.clone().requires_grad_()
    weighted_sum(ours(ours_input)).backward()
    reference_input = images.clone().requires_grad_()
    weighted_sum(reference_features(reference, ours, reference_input)).backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad, rtol=1e-4, atol=1e-4)
    for name, param in ours.named_parameters():
        if name.startswith('stages.2.blocks.8.channel.attn.qkv.weight') or name == 'stages.1.downsample.conv.weight':
            timm_name = name.replace('.channel.', '.channel_block.')
            torch.testing.assert_close(param.grad, reference.get_parameter(timm_name).grad, rtol=1e-4, atol=1e-4,
                                       msg=name)
    ours.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)


@pytest.mark.parametrize('switch,timm_option', [('downsample', dict(down_kernel_size=3)),
                                                ('channel_attention', dict(channel_attn_v2=True))])
def test_each_switch_alone_matches_timm(switch, timm_option):
    """A custom classic-sized tower with one Florence-2 change: the switches are independent."""
    from timm.models.davit import DaVit
    arch = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=5,
                **{switch: {'downsample': 'overlap', 'channel_attention': 'v2'}[switch]})
    timm_model = perturb_(DaVit(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8),
                                window_size=5, named_blocks=True, drop_path_rate=0.0, **timm_option)).eval()
    reference, ours = build_pair(timm_model, arch)
    images = torch.randn(2, 3, 61, 83)
    with torch.no_grad():
        diffs = max_diffs(ours(images), reference_features(reference, ours, images))
    assert max(diffs) <= TOLERANCE, f'{switch}: max abs diff per stage {diffs}'


def test_get_flops_counts_the_overlapping_downsample():
    """tools/analysis/get_flops.py on the Florence-2 blocks: channel attention v2 costs what v1 costs; the 3x3
    downsample adds 9 - 4 = 5 multiply-adds per output token, input channel and output channel over the 2x2."""
    from tests.tools.common import load_tool
    count_flops = load_tool('analysis/get_flops.py').count_flops
    arch = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=12)
    images = torch.rand(1, 3, 97, 131)
    flops = {switches: count_flops(DaViT(dict(arch, **dict(switches))).eval(), (images, ))
             for switches in [(), (('channel_attention', 'v2'), ), (('downsample', 'overlap'), ),
                              (('downsample', 'overlap'), ('channel_attention', 'v2'))]}
    height, width, dims, extra = 25, 33, 16, 0  # stage-0 tokens of 97 x 131
    for _ in range(3):
        height, width = -(-height // 2), -(-width // 2)
        extra += height * width * 2 * dims * dims * 5
        dims *= 2
    classic, v2, overlap, florence2 = flops.values()
    assert v2 == classic and florence2 == overlap == classic + extra
