"""Lets mmengine accept ``mmdavit::`` config bases in any interpreter, before ``custom_imports`` run.

mmengine 0.10 accepts ``pkg::`` bases only for packages in ``mmengine.config.utils.MODULE2PACKAGE`` and
parses ``_base_`` before importing ``custom_imports``. A ``.pth`` file installed with mmdavit calls
:func:`install` at interpreter start-up; it costs one finder on ``sys.meta_path`` (no mmengine or torch
import) and adds the ``mmdavit`` entry the moment ``mmengine.config.utils`` is first imported.
"""
import sys
from importlib.machinery import PathFinder

TARGET = 'mmengine.config.utils'


def register(module) -> None:
    module.MODULE2PACKAGE.setdefault('mmdavit', 'mmdavit')


class _RegisterAfterImport:  # a duck-typed meta path finder: importlib.abc costs start-up time

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # one-shot
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            register(module)

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    if TARGET in sys.modules:
        register(sys.modules[TARGET])
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
