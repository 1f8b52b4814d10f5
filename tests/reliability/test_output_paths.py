"""Training and testing write only under ``--work-dir`` and the requested output paths: nothing in the working
directory, the data or the configs. The only other writes are the per-user caches of third-party libraries,
each in its standard place: matplotlib's font list (``~/.cache/matplotlib``, and an empty
``~/.config/matplotlib``), yapf's grammar pickles (``~/.cache/YAPF``, mmengine formats configs with yapf) and
an empty ``$TMPDIR/torchinductor_$USER`` (torch); plus Python's own ``__pycache__``."""
import math
import os
from pathlib import Path

import pytest

from tests.commands import run
from tests.reliability.runs import ROOT, child_env, tool_command, write_config
from tests.reliability.trace_hook import read_trace


def snapshot(*folders: Path) -> set:
    files = set()
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != '__pycache__']
            files.update(os.path.join(dirpath, name) for name in filenames + dirnames)
    return files


@pytest.mark.slow
def test_train_amp_and_test_write_only_where_asked(tmp_path, tiny_data):
    """``tools/train.py --amp`` (bfloat16 on the CPU) then ``tools/test.py --out``, run from an empty folder
    with their own ``$HOME`` and ``$TMPDIR``."""
    config = write_config(tmp_path / 'configs', 'segmentation', tiny_data,
                          'default_hooks = dict(checkpoint=dict(interval=2))\n')
    cwd, home, tmpdir = tmp_path / 'cwd', tmp_path / 'home', tmp_path / 'tmpdir'
    for folder in (cwd, home, tmpdir):
        folder.mkdir()
    env = child_env(HOME=str(home), TMPDIR=str(tmpdir))
    for variable in ('XDG_CACHE_HOME', 'XDG_CONFIG_HOME', 'MPLCONFIGDIR', 'TORCHINDUCTOR_CACHE_DIR'):
        env.pop(variable, None)
    watched = [cwd, home, tmpdir, Path(tiny_data['ade']), tmp_path / 'configs', ROOT / 'configs', ROOT / 'tools']
    before = snapshot(*watched)

    train = run(tool_command('train.py', str(config), '--work-dir', 'work', '--amp'), cwd=cwd, env=env, timeout=300)
    assert 'mixed precision in bfloat16 autocast on the CPU' in train.stdout + train.stderr
    losses = [loss for record in read_trace(cwd / 'work' / 'trace_rank0.jsonl') for loss in record['losses'].values()]
    assert losses and all(math.isfinite(loss) for loss in losses)
    run(tool_command('test.py', str(config), 'work/iter_2.pth', '--work-dir', 'test_work', '--out', 'predictions'),
        cwd=cwd, env=env, timeout=300)

    created = snapshot(*watched) - before
    outputs = [cwd / 'work', cwd / 'test_work', cwd / 'predictions']
    caches = [home / '.cache' / 'matplotlib', home / '.config' / 'matplotlib', home / '.cache' / 'YAPF',
              *tmpdir.glob('torchinductor_*')]
    allowed = outputs + caches
    stray = sorted(p for p in created if not any(Path(p) == a or a in Path(p).parents for a in allowed)
                   and Path(p) not in (home / '.cache', home / '.config'))
    assert stray == []
    assert not any(p.is_file() for p in tmpdir.rglob('*')), 'files left in $TMPDIR'
    assert (cwd / 'work' / 'iter_2.pth').is_file() and any((cwd / 'predictions').iterdir())
