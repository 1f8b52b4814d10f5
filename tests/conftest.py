import logging
import os

import pytest
import torch
from mmengine.logging import MMLogger

# Two cores on CI: intra-op threads beyond that only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
