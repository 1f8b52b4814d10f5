import errno
import importlib.util
import logging
import os
from collections import OrderedDict

import pytest
import torch
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

from mmdavit.compat import torch_at_least


def requires_torch(version: str, feature: str):
    """Skip a test of ``feature`` on a torch older than ``version``, printing why (``make test-oldest``)."""
    return pytest.mark.skipif(not torch_at_least(version),
                              reason=f'{feature} needs torch >= {version} (this is torch {torch.__version__})')


# `make test-oldest` runs on torch 2.1 without mmcv (which has no wheel for it on PyPI), so without mmdet, mmseg
# and mmpretrain; `make install` checks that the main venv has all of them.
HAS_OPENMMLAB = all(importlib.util.find_spec(name) for name in ('mmcv', 'mmdet', 'mmseg', 'mmpretrain'))
requires_openmmlab = pytest.mark.skipif(not HAS_OPENMMLAB, reason='needs mmcv, mmdet, mmseg and mmpretrain (the '
                                        'torch 2.1 venv of make test-oldest has no mmcv)')


# Two cores on CI: intra-op threads beyond that only add contention. `make test` runs two pytest-xdist workers:
# one thread each.
torch.set_num_threads(1 if os.environ.get('PYTEST_XDIST_WORKER') else min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _isolated_global_state():
    """Each test starts from the process-wide state the session started with: a Runner makes its default scope
    current and, with ``randomness.deterministic``, switches torch to deterministic algorithms for good; either
    would change what later tests build or run (an order-dependent CI failure once)."""
    scopes = OrderedDict(DefaultScope._instance_dict)
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(scopes)
    torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])


@pytest.fixture
def log_records():
    """Every record mmengine's current logger emits during the test (warnings and info alike)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def disk_full_at(monkeypatch):
    """``disk_full_at('iter_2')``: a checkpoint write whose path contains that text writes half its bytes, then
    fails as a full disk would; other writes go through. Returns the original ``LocalBackend.put``."""
    original_put = LocalBackend.put

    def install(marker: str):

        def put_fails_half_way(self, obj, filepath):
            if marker in str(filepath):
                with open(filepath, 'wb') as f:
                    f.write(obj[:len(obj) // 2])
                raise OSError(errno.ENOSPC, 'No space left on device (simulated)')
            return original_put(self, obj, filepath)

        monkeypatch.setattr(LocalBackend, 'put', put_fails_half_way)
        return original_put

    return install
