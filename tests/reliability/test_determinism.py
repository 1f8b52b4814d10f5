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

    # The seed matters: trained from another one, every loss of every iteration differs (other initial weights,
    # crops and flips), so the runs above did not agree by accident.
    build_runner(write_config(tmp_path / 'seed1', 'segmentation', tiny_data, SEEDED.format(seed=1)),
                 tmp_path / 'third').train()
    other = read_trace(tmp_path / 'third' / 'trace_rank0.jsonl')
    assert [r['iter'] for r in other] == [1, 2]
    for seeded, reseeded in zip(first, other):
        losses = [k for k in seeded['losses'] if k.endswith('loss_ce') or k == 'loss']
        assert len(losses) == 3 and all(seeded['losses'][k] != reseeded['losses'][k] for k in losses), (seeded,
                                                                                                        reseeded)
