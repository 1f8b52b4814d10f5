import pytest

from tests.configs.tiny_runs import make_tiny_data


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """4 training and 2 validation images of 128x160, COCO and ADE layouts."""
    return make_tiny_data(tmp_path_factory.mktemp('reliability_data'))


@pytest.fixture(autouse=True)
def _restore_determinism_flags():
    """``randomness=dict(deterministic=True)`` switches torch's process-wide flags: undo after each test."""
    import torch
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]
