#!/usr/bin/env python
"""Train an mmdavit config without mim: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [PATH]]
[--amp] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]``.

Why delegate instead of copying: mmdet, mmseg and mmpretrain each install their own ``tools/train.py`` and
``tools/test.py`` (under ``<package>/.mim/tools/``, the files ``mim train`` runs). They differ in small,
user-visible ways (mmdet's ``--auto-scale-lr`` and ``--tta``, mmpretrain's ``--no-validate``, each package's
``--out`` format and ``--show-dir`` hook), and they track their package's fixes. So we pick the package from
the config's ``default_scope``, import its script with importlib and call its ``main()`` with ``sys.argv``,
adding only what those scripts lack:

* ``--resume PATH`` for mmseg, whose ``--resume`` takes no path (we pass ``load_from=PATH``);
* distributed runs without CUDA: mmengine would call ``torch.cuda.set_device`` and wrap the model with
  ``device_ids=[LOCAL_RANK]``; we start a gloo process group first and ask for a CPU
  ``MMDistributedDataParallel`` (``device_ids=None``). Users need not know: ``tools/dist_train.sh`` just works;
* ``runner_type`` where a script builds mmengine's ``Runner`` directly (mmseg's ``test.py``).

``tools/test.py`` imports :func:`run_upstream` from here. Works from any working directory (relative paths
in the config, such as ``data_root``, stay relative to it, as with the upstream scripts).
"""
import argparse
import importlib
import importlib.util
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import List, Optional, Sequence

import torch
from mmengine.config import Config, DictAction

# default_scope of a config -> the package whose tools/ scripts run it
SCOPE_TO_PACKAGE = {'mmdet': 'mmdet', 'mmseg': 'mmseg', 'mmpretrain': 'mmpretrain'}
DDP_TYPES = (None, 'MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel')


def config_first(argv: Sequence[str]) -> List[str]:
    """``--resume CONFIG ...`` (mmseg's ``--resume`` takes no value) as ``CONFIG --resume ...``.

    mmdet's and mmpretrain's ``--resume`` takes an optional checkpoint and would read the config as one; a
    checkpoint is never a ``.py`` file, so a ``.py`` right after ``--resume`` is the config."""
    argv = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == '--resume' and argv[i + 1].endswith('.py'):
            return [argv[i + 1], *argv[:i + 1], *argv[i + 2:]]
    return argv


def peek_args(script: str, argv: Sequence[str]) -> argparse.Namespace:
    """The few arguments we need before the upstream script parses ``argv`` itself."""
    parser = argparse.ArgumentParser(prog=f'tools/{script}.py', add_help=False)
    parser.add_argument('config')
    if script == 'test':
        parser.add_argument('checkpoint')
    parser.add_argument('--resume', nargs='?', const='auto')
    parser.add_argument('--launcher', default='none')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    # Declared only so that their values are not taken for the positional arguments.
    for option in ('--work-dir', '--out', '--show-dir', '--wait-time', '--out-item'):
        parser.add_argument(option)
    args, _ = parser.parse_known_args(argv)
    return args


def load_config(path: str, cfg_options: Optional[dict]) -> Config:
    if not Path(path).is_file():
        raise SystemExit(f'error: config file {path} not found (paths are relative to the current directory '
                         f'{Path.cwd()}; e.g. configs/detection/maskrcnn_davit_t.py from the repository root)')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def package_of(cfg: Config, path: str) -> str:
    """The OpenMMLab package a config belongs to, from its ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in SCOPE_TO_PACKAGE:
        raise SystemExit(f'error: {path} has default_scope={scope!r}; these tools run configs of '
                         f'{", ".join(SCOPE_TO_PACKAGE)} (the scope normally comes from the package\'s '
                         f'_base_/default_runtime.py; set default_scope in the config)')
    return SCOPE_TO_PACKAGE[scope]


def upstream_script_path(package: str, script: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f'error: {package} is not installed, but the config needs it: pip install {package}')
    root = Path(spec.origin).parent
    candidates = [root / '.mim' / 'tools' / f'{script}.py',  # pip installs
                  root.parent / 'tools' / f'{script}.py']  # editable installs of a source checkout
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(f'error: {package}\'s tools/{script}.py is not at {candidates[0]} nor {candidates[1]}. '
                     f'mmdavit runs the upstream script, which pip installs of {package} ship; reinstall '
                     f'{package} with pip, or run `mim {script} {package} CONFIG ...`')


def load_upstream_script(package: str, script: str) -> ModuleType:
    """Import ``<package>/.mim/tools/<script>.py`` as a module (it is not part of the package itself)."""
    path = upstream_script_path(package, script)
    spec = importlib.util.spec_from_file_location(f'_{package}_tools_{script}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resume_with_path_for_mmseg(argv: List[str], resume: Optional[str]) -> List[str]:
    """mmseg's train.py has ``--resume`` without a path: turn ``--resume PATH`` into
    ``--resume --cfg-options load_from=PATH`` (mmengine resumes from ``load_from`` when it is set)."""
    if resume is None or resume == 'auto':
        return argv
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == '--resume':
            out.append(arg)
            skip = i + 1 < len(argv) and argv[i + 1] == resume
        elif arg.startswith('--resume='):
            out.append('--resume')
        else:
            out.append(arg)
    return out + ['--cfg-options', f'load_from={resume}']


def setup_cpu_distributed(launcher: str, cfg: Config) -> List[str]:
    """Without CUDA, start the gloo process group ourselves and return the ``--cfg-options`` that make
    mmengine wrap the model in a CPU DistributedDataParallel. A no-op with CUDA or without a launcher."""
    if launcher == 'none' or torch.cuda.is_available():
        return []
    if launcher != 'pytorch':
        raise SystemExit(f'error: --launcher {launcher} needs CUDA GPUs (mmengine assigns each process a CUDA '
                         f'device) and none is available here. On CPU, launch with tools/dist_train.sh or '
                         f'torchrun (--launcher pytorch), which run on the gloo backend.')
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout')
    if not torch.distributed.is_initialized():
        # init_method env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, as set by torchrun.
        torch.distributed.init_process_group(backend='gloo',
                                             timeout=timedelta(seconds=timeout) if timeout else None)
    options = ['env_cfg.dist_cfg.backend=gloo']  # for the record in the dumped config; already initialised
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:  # mmengine's default wrapper, minus the CUDA device_ids
        options += ['model_wrapper_cfg.type=MMDistributedDataParallel', 'model_wrapper_cfg.device_ids=None',
                    'model_wrapper_cfg.broadcast_buffers=False',
                    f'model_wrapper_cfg.find_unused_parameters={bool(cfg.get("find_unused_parameters", False))}']
    elif wrapper.get('type') in DDP_TYPES:
        options.append('model_wrapper_cfg.device_ids=None')
    return ['--cfg-options', *options]


def honour_runner_type(module: ModuleType, cfg: Config, package: str) -> None:
    """Make ``Runner.from_cfg`` in the upstream script build the config's ``runner_type`` (mmseg's test.py
    builds mmengine's Runner directly; the other scripts already use the RUNNERS registry)."""
    runner_type = cfg.get('runner_type')
    if runner_type is None or not hasattr(module, 'Runner'):
        return
    runner_cls = importlib.import_module(f'{package}.registry').RUNNERS.get(runner_type)
    if runner_cls is None:
        raise SystemExit(f'error: runner_type={runner_type!r} is not a registered runner; is its package in '
                         f'the config\'s custom_imports (e.g. custom_imports=dict(imports=["mmdavit"]))?')
    module.Runner = runner_cls


def run_upstream(script: str, argv: Sequence[str], usage: str) -> None:
    """Run ``<package>/.mim/tools/<script>.py`` for the package of the config named in ``argv``."""
    argv = list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        out = sys.stdout if argv else sys.stderr
        print(usage, file=out)
        print(f'The options are those of the config\'s package\'s own tools/{script}.py: '
              f'tools/{script}.py CONFIG --help lists them.', file=out)
        sys.exit(0 if argv else 2)
    if script == 'train':
        argv = config_first(argv)
    args = peek_args(script, argv)
    cfg = load_config(args.config, args.cfg_options)
    package = package_of(cfg, args.config)
    if script == 'train' and package == 'mmseg':
        argv = resume_with_path_for_mmseg(argv, args.resume)
    argv += setup_cpu_distributed(args.launcher, cfg)
    module = load_upstream_script(package, script)
    honour_runner_type(module, cfg, package)
    sys.argv = [module.__file__, *argv]
    module.main()


if __name__ == '__main__':
    run_upstream('train', sys.argv[1:], __doc__)
