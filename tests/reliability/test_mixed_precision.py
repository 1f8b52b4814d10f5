"""Mixed precision: DaViT under bfloat16 autocast stays close to float32, and ``AmpOptimWrapper`` (``--amp``)
trains Mask R-CNN and UperNet on the CPU, where mmengine alone refuses (it asserts a GPU).

Measured on CPU (DaViT-T, random weights, 2 x 3 x 128 x 160 and 97 x 131 inputs): per-stage relative L2
error 0.6% (stride 4) to 2.3% (stride 32), cosine similarity >= 0.9997 per sample. Asserted: < 4%, > 0.999.
"""
import math

import pytest
import torch

from mmdavit.models import DaViT
from mmdavit.engine import CPUAmpOptimWrapper
from tests.models.reference import perturb_
from tests.reliability.runs import build_runner, write_config
from tests.reliability.trace_hook import read_trace
from tests.conftest import requires_openmmlab, requires_torch

REL_L2_TOLERANCE = 0.04
MIN_COSINE = 0.999


@pytest.mark.parametrize('size', [(128, 160), (97, 131)], ids=lambda s: f'{s[0]}x{s[1]}')
def test_backbone_bf16_autocast_close_to_fp32(size):
    model = perturb_(DaViT('tiny', drop_path_rate=0.0)).eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        reference = model(images)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            mixed = model(images)
    for stage, (low, high) in enumerate(zip(mixed, reference)):
        assert low.dtype == torch.bfloat16, 'autocast did not reach the backbone'
        low = low.float()
        rel = ((low - high).norm() / high.norm()).item()
        cosine = torch.nn.functional.cosine_similarity(low.flatten(1), high.flatten(1)).min().item()
        assert rel < REL_L2_TOLERANCE, f'stage {stage}: relative L2 error {rel:.4f}'
        assert cosine > MIN_COSINE, f'stage {stage}: cosine similarity {cosine:.6f}'


def test_cpu_amp_needs_torch_2_4(monkeypatch):
    monkeypatch.setattr(torch, '__version__', '2.3.1')
    with pytest.raises(RuntimeError, match=r'^Mixed precision on the CPU .* needs torch >= 2\.4; this is torch 2\.3\.1'):
        CPUAmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


@requires_torch('2.4', 'Mixed precision on the CPU')
def test_cpu_amp_rejects_float16():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match='bfloat16 only, got optim_wrapper.dtype=torch.float16'):
        CPUAmpOptimWrapper(dtype='float16', optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


@requires_openmmlab
@requires_torch('2.4', 'Mixed precision on the CPU')
@pytest.mark.slow
@pytest.mark.parametrize('kind', ['detection', 'segmentation'])
def test_amp_optim_wrapper_trains_on_cpu(tmp_path, tiny_data, kind):
    """The synthetic configs (narrow DaViT, see runs.py) with optim_wrapper type AmpOptimWrapper, dtype
    bfloat16: two iterations with finite losses, the backbone computing in bfloat16 and the weights staying
    float32. (``tools/train.py --amp``: tests/reliability/test_output_paths.py.)"""
    config = write_config(tmp_path, kind, tiny_data, "optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16')\n")
    runner = build_runner(config, tmp_path / 'work')
    backbone_dtypes = []
    runner.model.backbone.register_forward_hook(lambda m, i, out: backbone_dtypes.append(out[0].dtype))
    before = runner.model.backbone.stem.conv.weight.detach().clone()
    runner.train()

    assert type(runner.optim_wrapper) is CPUAmpOptimWrapper
    trace = read_trace(tmp_path / 'work' / 'trace_rank0.jsonl')
    assert [r['iter'] for r in trace] == [1, 2]
    for record in trace:
        assert all(math.isfinite(v) for v in record['losses'].values()), record['losses']
    assert backbone_dtypes and set(backbone_dtypes) == {torch.bfloat16}
    after = runner.model.backbone.stem.conv.weight
    assert after.dtype == torch.float32 and not torch.equal(after, before)
