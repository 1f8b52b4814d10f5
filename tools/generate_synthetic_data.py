#!/usr/bin/env python
"""Generate the seeded synthetic shapes datasets used by ``make demo`` (no downloads).

    python tools/generate_synthetic_data.py all --out data/synthetic
    python tools/generate_synthetic_data.py coco --out data/synthetic --num-train 200 --num-val 50 \
        --size 192 256 --seed 0

writes ``<out>/coco`` (COCO instances layout) and / or ``<out>/ade`` (ADE20K layout) and prints a JSON
summary. A folder that already holds the same dataset (same parameters) is kept as it is; ``--force``
regenerates it. See ``mmdavit/datasets/synthetic.py`` for the layouts and the config snippets.
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

SYNTHETIC_PY = Path(__file__).resolve().parents[1] / 'mmdavit' / 'datasets' / 'synthetic.py'


def load_synthetic_module() -> ModuleType:
    """Load synthetic.py by path: ``import mmdavit`` would pull in torch and mmengine (seconds, and a
    full install) for a job that needs only numpy, Pillow and OpenCV."""
    spec = importlib.util.spec_from_file_location('_mmdavit_synthetic', SYNTHETIC_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dataset', choices=('coco', 'ade', 'all'), help='which dataset(s) to write')
    parser.add_argument('--out', default='data/synthetic', help='parent folder (default: %(default)s)')
    parser.add_argument('--num-train', type=int, default=200, help='training images (default: %(default)s)')
    parser.add_argument('--num-val', type=int, default=50, help='validation images (default: %(default)s)')
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'), default=(192, 256),
                        help='image height and width (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: %(default)s)')
    parser.add_argument('--force', action='store_true', help='regenerate even if the data already exists')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    synthetic = load_synthetic_module()
    makers = {'coco': synthetic.make_coco_instances, 'ade': synthetic.make_ade_semantic}
    names = list(makers) if args.dataset == 'all' else [args.dataset]
    for name in names:
        start = time.perf_counter()
        try:
            summary = makers[name](Path(args.out) / name, num_train=args.num_train, num_val=args.num_val,
                                   image_size=tuple(args.size), seed=args.seed, force=args.force)
        except (ValueError, FileExistsError) as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
        summary['seconds'] = round(time.perf_counter() - start, 2)
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
