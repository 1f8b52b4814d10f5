"""The supported torch range: the floor at import, features that need a newer torch say so up front."""
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from mmdavit import compat


def test_import_on_an_older_torch_names_the_torch_it_needs():
    code = "import torch; torch.__version__ = '2.0.1+cu118'; import mmdavit"
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: mmdavit needs torch >= 2.1 (torch 2.0.1+cu118 is installed)'), last


@pytest.mark.parametrize('version, feature_works', [('2.1.2', True), ('2.14.1+cu130', True), ('2.0.0', False)])
def test_require_torch_names_feature_and_version(monkeypatch, version, feature_works):
    monkeypatch.setattr(torch, '__version__', version)
    if feature_works:
        compat.require_torch('2.1', 'Feature X')
        return
    with pytest.raises(RuntimeError, match=r'^Feature X needs torch >= 2.1; this is torch 2.0.0\.'):
        compat.require_torch('2.1', 'Feature X')


def test_fsdp_on_cpu_ranks_runs_or_is_refused_up_front(tmp_path):
    """Where torch's own FSDP cannot train on a CPU rank (torch 2.1), DaViTFSDPStrategy stops before it with one
    clear error; where it can, the check lets it through."""
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "rendezvous"}', rank=0, world_size=1)
    try:
        model = FSDP(nn.Linear(4, 4), device_id=torch.device('cpu'))
        try:
            model(torch.randn(2, 4)).sum().backward()
        except TypeError:  # torch 2.1: "Stream() takes no arguments"
            with pytest.raises(RuntimeError, match=r'^Sharded training \(FSDP\) on CPU ranks needs a newer torch'):
                compat.check_cpu_fsdp()
        else:
            compat.check_cpu_fsdp()
    finally:
        dist.destroy_process_group()


def test_cpu_fused_optimizer_step_works_or_falls_back_with_a_warning():
    """Our CPU configs ask for AdamW(fused=True). Where torch's fused step cannot run on the CPU (torch < 2.4),
    DaViTRunner takes the for-each step and says so; the update is the same either way."""
    from mmdavit.engine.runner import without_cpu_fused_step
    warnings = []
    logger = type('Logger', (), {'warning': staticmethod(warnings.append)})
    cfg = without_cpu_fused_step(dict(optimizer=dict(type='AdamW', lr=1e-2, fused=True)), logger)
    weights = {}
    for fused in (cfg['optimizer']['fused'], None):
        torch.manual_seed(0)
        layer = nn.Linear(4, 3)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, fused=fused)
        for _ in range(3):
            optimizer.zero_grad()
            layer(torch.randn(5, 4)).pow(2).sum().backward()
            optimizer.step()
        weights[fused] = layer.weight.detach()
    torch.testing.assert_close(weights[cfg['optimizer']['fused']], weights[None], rtol=1e-6, atol=1e-7)
    if compat.torch_at_least('2.4'):
        assert cfg['optimizer']['fused'] is True and not warnings
        return
    assert cfg['optimizer']['fused'] is False and cfg['optimizer']['lr'] == 1e-2
    assert len(warnings) == 1 and 'needs torch >= 2.4' in warnings[0] and torch.__version__ in warnings[0]
    with pytest.raises(RuntimeError, match='fused=True'):  # what the fallback avoids on this torch
        torch.optim.AdamW(nn.Linear(2, 2).parameters(), fused=True)
