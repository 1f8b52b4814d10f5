"""``tools/dist_train.sh CONFIG 2``: two processes (torchrun; gloo on CPU) train on disjoint halves of the data
and end with the same weights, which are the weights in the checkpoint, and which training moved from the
initial ones (DDP broadcasts rank 0's weights, so equal ranks alone would not show that a step took effect)."""
import socket
import sys

import pytest
import torch
from mmengine.config import Config

from tests.commands import run
from tests.configs.backbone_probe import assert_backbone_learned, read_probe
from tests.reliability.runs import CONFIGS, ROOT, child_env, write_config
from tests.reliability.trace_hook import read_trace

DISTRIBUTED = '''
train_dataloader = dict(batch_size=1)
default_hooks = dict(checkpoint=dict(interval=1))
custom_imports = dict(imports=['mmdavit', 'tests.reliability.trace_hook', 'tests.configs.backbone_probe'],
                      allow_failed_imports=False)
custom_hooks = [dict(type='TraceHook'), dict(type='BackboneProbe')]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_synthetic_configs_need_no_syncbn(kind):
    """gloo has no SyncBatchNorm: the configs that the distributed test runs must not ask for it."""
    text = Config.fromfile(str(CONFIGS[kind])).pretty_text
    assert 'SyncBN' not in text


@pytest.mark.slow
def test_dist_train_two_processes_same_weights(tmp_path, tiny_data):
    config = write_config(tmp_path, 'detection', tiny_data, DISTRIBUTED)
    work_dir = tmp_path / 'work'
    env = child_env(PORT=str(free_port()), PYTHON=sys.executable, OMP_NUM_THREADS='1')
    result = run(['bash', ROOT / 'tools/dist_train.sh', config, 2, '--work-dir', work_dir], cwd=tmp_path, env=env,
                 timeout=600)
    assert 'gloo' in result.stdout + result.stderr

    traces = [read_trace(work_dir / f'trace_rank{rank}.jsonl') for rank in (0, 1)]
    for trace in traces:  # 4 images, 2 processes, batch 1: 2 iterations each
        assert [r['iter'] for r in trace] == [1, 2]
    seen = [s['img_path'] for trace in traces for r in trace for s in r['samples']]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 4, 'the ranks must split the data'

    states = [torch.load(work_dir / f'final_state_rank{rank}.pth', weights_only=True) for rank in (0, 1)]
    checkpoint = torch.load(work_dir / 'epoch_1.pth', weights_only=True)['state_dict']
    assert states[0].keys() == states[1].keys() == checkpoint.keys()
    for key in checkpoint:
        assert torch.equal(states[0][key], states[1][key]), f'{key} differs between ranks'
        assert torch.equal(states[0][key], checkpoint[key]), f'{key} differs from the checkpoint'

    # The steps took effect on both ranks: every part of the backbone had a gradient at both steps and all of
    # its weights moved; the neck and heads moved too.
    for rank in (0, 1):
        assert_backbone_learned(work_dir, steps=2, rank=rank)
        parts = read_probe(work_dir, rank)['parts']
        assert {'neck', 'rpn_head', 'roi_head'} <= set(parts)
        assert all(r['moved'] > 0 for r in parts.values()), parts
