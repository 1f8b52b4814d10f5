"""Shared by the tools tests: import a script from tools/ by path, make data (``run`` is tests/commands.py's)."""
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import List

from tests.commands import run

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools'
DET_CONFIG = REPO / 'configs' / 'detection' / 'maskrcnn_davit_t_synthetic.py'
SEG_CONFIG = REPO / 'configs' / 'segmentation' / 'upernet_davit_t_synthetic.py'


def load_tool(relative_path: str) -> ModuleType:
    """Import ``tools/<relative_path>`` (tools/ is not a package)."""
    path = TOOLS / relative_path
    spec = importlib.util.spec_from_file_location(f'tools_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_synthetic_coco(out: Path, num_train: int = 4, num_val: int = 2) -> Path:
    """A tiny synthetic COCO-format set (the demo's generator), returning its root."""
    run([sys.executable, TOOLS / 'generate_synthetic_data.py', 'coco', '--out', out, '--num-train', num_train,
         '--num-val', num_val, '--size', 128, 160], cwd=out)
    return out / 'coco'


def coco_options(root: Path) -> List[str]:
    """``--cfg-options`` values pointing the synthetic detection config at ``root``, without workers."""
    options = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={root}/', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options.append(f'{evaluator}.ann_file={root}/annotations/instances_val2017.json')
    return options
