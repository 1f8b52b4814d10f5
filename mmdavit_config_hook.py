"""Lets mmengine and mim find mmdavit's configs (``mmdavit::`` bases) in any interpreter.

mmengine 0.10 accepts ``pkg::`` bases only for packages in ``mmengine.config.utils.MODULE2PACKAGE`` and
parses ``_base_`` before importing ``custom_imports``; and mmengine's and mim's ``get_installed_path``
return ``site-packages/mmdavit`` even for an editable (PEP 660) install, where no such folder exists.
And mmengine tags every typed dict of a ``pkg::`` base with ``_scope_='pkg'``, which would send the
mmdet/mmseg transforms our configs name to the mmdavit registries: our configs are mmdet/mmseg configs,
so their bases are read without a scope of their own (inherited ``mmdet::``/``mmseg::`` scopes stay).
A ``.pth`` file installed with mmdavit calls :func:`install` at interpreter start-up: it costs one finder
on ``sys.meta_path`` (no mmengine, mim or torch import) that patches those modules when they are imported.
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


def _read_mmdavit_bases_unscoped(module) -> None:
    upstream = module.Config._get_cfg_path

    def _get_cfg_path(cfg_path: str, filename: str):
        path, scope = upstream(cfg_path, filename)
        return path, None if scope == 'mmdavit' else scope

    module.Config._get_cfg_path = staticmethod(_get_cfg_path)


PATCHES = {
    'mmengine.config.config': _read_mmdavit_bases_unscoped,
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
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    if not any(isinstance(finder, _PatchAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
