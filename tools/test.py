#!/usr/bin/env python
"""Evaluate a checkpoint without mim: ``python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
[--show-dir DIR] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]``.

Runs the ``tools/test.py`` of the config's package (mmdet, mmseg or mmpretrain, from ``default_scope``), so
``--out`` and ``--show-dir`` mean what they mean there: mmdet dumps a ``.pkl`` of predictions, mmseg writes
prediction maps into a directory; mmdet draws pictures into ``WORK_DIR/TIMESTAMP/SHOW_DIR``, mmseg into
``SHOW_DIR`` relative to the current directory. See tools/train.py for why
we delegate and what we add (runner_type for every package, CPU distributed runs on gloo).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is not a package
from train import run_upstream  # noqa: E402

if __name__ == '__main__':
    run_upstream('test', sys.argv[1:], __doc__)
