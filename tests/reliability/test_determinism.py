"""``randomness=dict(seed=..., deterministic=True)``: two runs give the same losses, another seed does not."""
import torch

from tests.reliability.runs import build_runner, write_config
from tests.reliability.trace_hook import read_trace

SEEDED = "randomness = dict(seed={seed}, deterministic=True)\n"


def test_same_seed_same_losses(tmp_path, tiny_data):
    config = write_config(tmp_path / 'seed0', 'segmentation', tiny_data, SEEDED.format(seed=0))
    traces = []
    for run in ('first', 'second'):
        runner = build_runner(config, tmp_path / run)
        assert torch.are_deterministic_algorithms_enabled()
        runner.train()
        traces.append(read_trace(tmp_path / run / 'trace_rank0.jsonl'))
    first, second = traces
    assert [r['iter'] for r in first] == [1, 2]
    assert first == second  # images, flips, every loss term, every LR: bit for bit

    # The seed matters: another one initialises other weights (so the runs above did not agree by accident).
    other = build_runner(write_config(tmp_path / 'seed1', 'segmentation', tiny_data, SEEDED.format(seed=1)),
                         tmp_path / 'third')
    seeded = build_runner(config, tmp_path / 'fourth')
    assert not torch.equal(other.model.backbone.stem.conv.weight, seeded.model.backbone.stem.conv.weight)
