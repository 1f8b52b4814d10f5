"""Lets mmengine and mim find mmdavit's configs (``mmdavit::`` bases) in any interpreter.

mmengine 0.10 accepts ``pkg::`` bases only for packages in ``mmengine.config.utils.MODULE2PACKAGE`` and
parses ``_base_`` before importing ``custom_imports``; and mmengine's and mim's ``get_installed_path``
return ``site-packages/mmdavit`` even for an editable (PEP 660) install, where no such folder exists.
And mmengine tags every typed dict of a ``pkg::`` base with ``_scope_='pkg'``, which would send the
mmdet/mmseg transforms our configs name to the mmdavit registries: our configs are mmdet/mmseg configs,
so their bases are read without a scope of their own (inherited ``mmdet::``/``mmseg::`` scopes stay).
A ``.pth`` file installed with mmdavit calls :func:`install` at interpreter start-up: it costs one finder
on ``sys.meta_path`` (no mmengine, mim or torch import) that patches those modules when they are imported.
``import mmdavit`` calls it too, for interpreters that skip ``.pth`` files (``python -S``, ``pip install
--target``, PYTHONPATH-only set-ups); modules imported before that are patched in place.

A misspelt ``mmdavit::`` base gets one error naming what was asked and listing every config mmdavit has
(mmengine would raise three chained tracebacks, listing only the configs of the model index).

mmengine's inferencers (mmdet's ``DetInferencer``, mmseg's ``MMSegInferencer``) take a string that is not a file
for a model name of their own package's model index ("Cannot find model: mmdavit::... in mmdet"): they also
take ``mmdavit::`` config names, and the names of mmdavit's model index (``maskrcnn_davit_t``) that their own
index lacks.
"""
import sys
from importlib.machinery import PathFinder
from importlib.util import find_spec


def _package_dir() -> str:
    return find_spec('mmdavit').submodule_search_locations[0]  # finds, does not import, the package


def _register_scope(module) -> None:
    module.MODULE2PACKAGE.setdefault('mmdavit', 'mmdavit')


def _locate_mmdavit(module) -> None:
    upstream = module.get_installed_path

    def get_installed_path(package: str) -> str:
        return _package_dir() if package == 'mmdavit' else upstream(package)

    module.get_installed_path = get_installed_path
    # Patched after the fact (``import mmdavit`` without the start-up hook), modules that imported the function
    # by name (mmengine.utils, mmengine.config.config, mim.commands.*) still hold the upstream one.
    for name, other in list(sys.modules.items()):
        if name.partition('.')[0] in ('mmengine', 'mim') and getattr(other, 'get_installed_path', None) is upstream:
            other.get_installed_path = get_installed_path


def config_names() -> list:
    """Every config mmdavit ships, as ``mmdavit::`` takes them (``detection/maskrcnn_davit_t.py``)."""
    from pathlib import Path  # here, not at start-up: this module is imported by every interpreter
    root = Path(_package_dir()) / '.mim' / 'configs'
    return sorted(path.relative_to(root).as_posix() for path in root.rglob('*.py'))


def check_config_exists(cfg_path: str, filename: str) -> None:
    """A clear error for an ``mmdavit::`` base that does not exist, with every config that does."""
    name = cfg_path.partition('::')[2]
    names = config_names()
    if name in names:
        return
    from difflib import get_close_matches
    close = get_close_matches(name, names, n=1)
    hint = f' Did you mean mmdavit::{close[0]}?' if close else ''
    raise FileNotFoundError(f'{filename} asks for the base config {cfg_path!r}, which mmdavit does not have.{hint} '
                            f'mmdavit\'s configs: {", ".join(names)}')


def _read_mmdavit_bases_unscoped(module) -> None:
    upstream = module.Config._get_cfg_path

    def _get_cfg_path(cfg_path: str, filename: str):
        if cfg_path.startswith('mmdavit::'):
            check_config_exists(cfg_path, filename)
        path, scope = upstream(cfg_path, filename)
        return path, None if scope == 'mmdavit' else scope

    module.Config._get_cfg_path = staticmethod(_get_cfg_path)


def _inferencers_take_mmdavit_names(module) -> None:
    upstream = module.BaseInferencer._load_model_from_metafile

    def _load_model_from_metafile(self, model: str):
        from mmengine.config import Config
        if model.startswith('mmdavit::'):
            path, _ = Config._get_cfg_path(model, f'{type(self).__name__}(model={model!r})')
            return Config.fromfile(path), None  # no weights: give weights=PATH
        try:
            return upstream(self, model)
        except ValueError as not_found:  # "Cannot find model: NAME in SCOPE"
            found = _mmdavit_model_index_config(model)
            if found is None:
                raise
            cfg = Config.fromfile(found)
            if cfg.get('default_scope') != self.scope:
                raise ValueError(f'{model} is an mmdavit {cfg.get("default_scope")} config, not {self.scope}: use '
                                 f'that package\'s inferencer') from not_found
            return cfg, None

    module.BaseInferencer._load_model_from_metafile = _load_model_from_metafile


def _mmdavit_model_index_config(name: str):
    """The config file of the model called ``name`` (case-insensitive) in mmdavit's model index, or None."""
    from pathlib import Path
    from mmengine.infer import BaseInferencer
    mim_dir = Path(_package_dir()) / '.mim'
    for entry in BaseInferencer._get_models_from_metafile(str(mim_dir)):
        if entry['Name'].lower() == name.lower():
            return str(mim_dir / entry['Config'])
    return None


PATCHES = {
    'mmengine.config.config': _read_mmdavit_bases_unscoped,
    'mmengine.infer.infer': _inferencers_take_mmdavit_names,
    'mmengine.config.utils': _register_scope,
    'mmengine.utils.package_utils': _locate_mmdavit,
    'mim.utils.utils': _locate_mmdavit,
}


class _PatchAfterImport:  # a duck-typed meta path finder: importing importlib.abc costs start-up time

    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    """Patch the modules of PATCHES that are imported, and the others as they are imported. Idempotent: once the
    finder is in place, every module it covers was patched by this function or by the finder."""
    if any(isinstance(finder, _PatchAfterImport) for finder in sys.meta_path):
        return
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchAfterImport())
