#!/usr/bin/env python
"""Plot the training loss and the validation metric of an mmengine run into one PNG.

    python tools/analysis/plot_training.py work_dirs/maskrcnn_davit_t_synthetic

Reads ``<work_dir>/<timestamp>/vis_data/scalars.json`` (the newest run), the file mmengine's
LocalVisBackend writes, and draws ``loss`` over iterations with ``coco/bbox_mAP``, ``coco/segm_mAP`` or
``mIoU`` (whichever the run logged) on a second axis.
"""
import argparse
import json
import sys
from pathlib import Path

METRICS = ('coco/bbox_mAP', 'coco/segm_mAP', 'mIoU')


def read_scalars(work_dir: Path):
    runs = sorted(work_dir.glob('*/vis_data/scalars.json'))
    if not runs:
        raise FileNotFoundError(f'No */vis_data/scalars.json under {work_dir}: is it an mmengine work_dir?')
    train, val, last_step = [], [], 0
    for line in runs[-1].read_text().splitlines():
        record = json.loads(line)
        if 'loss' in record:
            last_step = record['iter']
            train.append((last_step, record['loss']))
        elif any(m in record for m in METRICS):
            val.append((last_step, {m: record[m] for m in METRICS if m in record}))
    return runs[-1], train, val


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dir', type=Path)
    parser.add_argument('--out', type=Path, help='PNG path (default: <work_dir>/training_curves.png)')
    args = parser.parse_args()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    source, train, val = read_scalars(args.work_dir)
    if not train:
        print(f'error: {source} has no training loss yet', file=sys.stderr)
        return 1
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(*zip(*train), color='tab:blue', label='train loss')
    loss_axis.set_xlabel('iteration')
    loss_axis.set_ylabel('loss', color='tab:blue')
    if val:
        metric_axis = loss_axis.twinx()
        for metric, colour in zip(METRICS, ('tab:red', 'tab:orange', 'tab:green')):
            points = [(step, values[metric]) for step, values in val if metric in values]
            if points:
                metric_axis.plot(*zip(*points), 'o-', color=colour, label=metric)
        metric_axis.set_ylabel('validation metric')
        metric_axis.legend(loc='center right')
    loss_axis.set_title(args.work_dir.name)
    fig.tight_layout()
    out = args.out or args.work_dir / 'training_curves.png'
    fig.savefig(out, dpi=110)
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
