"""Tiny training runs for the reliability tests: config files, in-process runners and tools/ subprocesses."""
import os
import sys
from pathlib import Path

from mmengine.config import Config

from tests.configs.tiny_runs import detection_overrides, segmentation_overrides

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    'detection': ROOT / 'configs/detection/maskrcnn_davit_t_synthetic.py',
    'segmentation': ROOT / 'configs/segmentation/upernet_davit_t_synthetic.py',
}
TRACE = '''
custom_imports = dict(imports=['mmdavit', 'tests.reliability.trace_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='TraceHook')]
'''
# Layer-wise LR decay, so that resume has per-group learning rates to restore.
LAYER_DECAY = '''
optim_wrapper = dict(constructor='mmdavit.DaViTLayerDecayOptimWrapperConstructor', paramwise_cfg=dict(decay_rate=0.9))
'''


# A narrow DaViT (dims 32..256, one layer per stage) and heads to match: the same code paths as DaViT-T at a
# fraction of the compute, and checkpoints of a few MB instead of ~600 MB (with AdamW state).
SMALL_BACKBONE = "dict(_delete_=True, embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))"
SMALL_MODEL = {
    'detection': f'''
model = dict(
    backbone=dict(arch={SMALL_BACKBONE}),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(num_convs=2, in_channels=32, conv_out_channels=32)))
''',
    'segmentation': f'''
model = dict(
    backbone=dict(arch={SMALL_BACKBONE}),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=32),
    auxiliary_head=dict(in_channels=128, channels=32))
''',
}
# No validation and no checkpoint unless a later layer asks for them.
TRAIN_ONLY = "train_cfg = dict(val_begin=1000)\ndefault_hooks = dict(checkpoint=dict(interval=1000))\n"


def write_config(folder: Path, kind: str, data: dict, *layers: str, small: bool = True,
                 train_only: bool = True) -> Path:
    """The synthetic demo config shrunk to seconds (tests/configs/tiny_runs.py) with the trace hook, then
    the small model (``small``), no validation or checkpoint (``train_only``) and each of ``layers`` (config
    source), each in a file inheriting the previous one, so that a later layer's dicts merge into the
    earlier ones instead of replacing them. Returns the last file."""
    overrides = detection_overrides(data['coco']) if kind == 'detection' else segmentation_overrides(data['ade'])
    sources = [overrides + TRACE] + ([SMALL_MODEL[kind]] if small else []) + ([TRAIN_ONLY] if train_only else [])
    folder.mkdir(parents=True, exist_ok=True)
    base = CONFIGS[kind]
    for index, source in enumerate(sources + list(layers)):
        path = folder / f'{kind}_{index}.py'
        path.write_text(f'_base_ = {str(base)!r}\n{source}')
        base = path
    return base


def build_runner(config: Path, work_dir: Path):
    import mmdavit  # noqa: F401
    from mmdavit.registry import RUNNERS
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(work_dir)
    return RUNNERS.build(cfg)


def child_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS='ignore')
    env.update(extra)
    return env


def tool_command(script: str, *args: str) -> list:
    return [sys.executable, str(ROOT / 'tools' / script), *args]

