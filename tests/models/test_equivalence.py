"""Numerical identity with timm's DaViT (the reference for the official weights) on the same weights."""
import pytest
import torch

from mmdavit.models import fast_paths
from mmdavit.models import DaViT, convert_state_dict
from tests.models.reference import SMALL_SB, perturb_, timm_davit

SIZES = [(224, 224), (97, 131), (33, 45), (7, 9), (1, 1)]
TOLERANCE = 1e-4


def build_pair(arch: dict):
    reference = timm_davit(**arch)
    ours = DaViT(arch=dict(arch), drop_path_rate=0.0)
    state, fmt = convert_state_dict(reference.state_dict())
    assert fmt == 'timm'
    # The official detection backbone's norm{i} have no timm counterpart: give them random weights.
    perturb_(ours)
    norms = {k: v for k, v in ours.state_dict().items() if k.startswith('norm')}
    missing, unexpected = ours.load_state_dict({**state, **norms}, strict=False)
    assert missing == [] and sorted(unexpected) == ['head.fc.bias', 'head.fc.weight', 'head.norm.bias',
                                                    'head.norm.weight']
    return reference, ours.eval()


def reference_features(reference, ours: DaViT, images: torch.Tensor):
    """timm's un-normalised stage outputs passed through our per-stage output norms."""
    feats = reference.forward_intermediates(images, intermediates_only=True)
    return [getattr(ours, f'norm{i}')(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for i, f in enumerate(feats)]


@pytest.fixture(scope='module')
def tiny_pair():
    return build_pair(dict(embed_dims=96, depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24)))


@pytest.fixture(scope='module')
def sb_pair():
    return build_pair(dict(SMALL_SB))


@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
@pytest.mark.parametrize('pair', ['tiny_pair', 'sb_pair'])
def test_matches_timm(pair, size, request):
    reference, ours = request.getfixturevalue(pair)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference_features(reference, ours, images)
        actual = ours(images)
    assert len(actual) == 4
    for stage, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f'stage {stage}'
        diff = (a - e).abs().max().item()
        assert diff <= TOLERANCE, f'stage {stage} at {size}: max abs diff {diff:.2e}'


def test_output_sizes_follow_ceil_rules(tiny_pair):
    _, ours = tiny_pair
    with torch.no_grad():
        feats = ours(torch.randn(1, 3, 97, 131))
    h, w = 97, 131
    for stage, feat in enumerate(feats):
        stride = 4 * 2**stage
        assert feat.shape[1:] == (96 * 2**stage, -(-h // stride), -(-w // stride))


def test_out_indices_subset_matches_full(tiny_pair):
    _, full = tiny_pair
    subset = DaViT(arch='tiny', out_indices=(-1, 1)).eval()
    subset.load_state_dict({k: v for k, v in full.state_dict().items() if k not in ('norm0.weight', 'norm0.bias',
                                                                                   'norm2.weight', 'norm2.bias')})
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = full(images)
        actual = subset(images)
    assert subset.out_indices == (1, 3)
    torch.testing.assert_close(actual[0], expected[1])
    torch.testing.assert_close(actual[1], expected[3])


@pytest.fixture
def one_thread_small_bands(monkeypatch):
    """The single-thread CPU paths: residuals computed in bands (here of 64 tokens, so that small inputs
    are cut into many bands, including a ragged last one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(fast_paths, 'BAND_TOKENS', 64)
    yield
    torch.set_num_threads(threads)


def weighted_sum(features):
    """A loss whose gradient differs at every output position."""
    return sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in features)


@pytest.mark.parametrize('size', [(97, 131), (33, 45)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_banded_forward_and_backward_match_timm(tiny_pair, one_thread_small_bands, size):
    reference, ours = tiny_pair
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference_features(reference, ours, images)
        for stage, (a, e) in enumerate(zip(ours(images), expected)):
            assert (a - e).abs().max().item() <= TOLERANCE, f'no-grad stage {stage}'

    ours_input = images.clone().requires_grad_()
    weighted_sum(ours(ours_input)).backward()
    reference_input = images.clone().requires_grad_()
    weighted_sum(reference_features(reference, ours, reference_input)).backward()
    torch.testing.assert_close(ours_input.grad, reference_input.grad, rtol=1e-4, atol=1e-4)
    ours.zero_grad()


def test_banded_drop_path_drops_whole_samples(one_thread_small_bands, monkeypatch):
    """Drop path draws one decision per sample, shared by every band: banded == unbanded, same seed."""
    model = DaViT('tiny', drop_path_rate=0.5).train()
    images = torch.randn(4, 3, 65, 97)
    torch.manual_seed(0)
    banded = model(images)
    monkeypatch.setattr(fast_paths, 'BAND_TOKENS', 10**9)
    torch.manual_seed(0)
    whole = model(images)
    for a, e in zip(banded, whole):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-6)
