"""mmdavit: the DaViT backbone for OpenMMLab detection and segmentation.

torch, torchvision and mmcv are deliberately not in install_requires: pip would otherwise resolve its own
torch (several GB, and not the build mmcv was compiled against). Install them first (see the Makefile /
README), then ``pip install -e .``.
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = 'mmdavit-config-hook.pth'
# site.py runs a .pth line that starts with `import` at every interpreter start and prints a traceback if it fails.
# The line does nothing when the module is gone (an editable checkout that was moved or deleted).
PTH_LINE = ("import importlib.util; importlib.util.find_spec('mmdavit_config_hook') is None or "
            "__import__('mmdavit_config_hook').install()\n")


def write_pth(site_dir) -> str:
    path = Path(site_dir) / PTH_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PTH_LINE)
    return str(path)


class build_py_with_pth(build_py):
    """Regular wheels: the .pth sits at the wheel root, which is installed into site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            write_pth(self.build_lib)


class editable_wheel_with_pth(editable_wheel):
    """Editable (PEP 660) wheels: setuptools points ``install_lib`` at the wheel root; put the .pth there."""

    def _run_install(self, category):
        super()._run_install(category)
        if category == 'data':
            write_pth(self.get_finalized_command('install').install_lib)


HERE = Path(__file__).parent


def requirements(path: str) -> list:
    lines = (HERE / path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setup(
    name='mmdavit',
    version='0.1.0',
    description='DaViT (Dual Attention Vision Transformer) backbone for mmdet, mmseg and mmpretrain',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.8',
    packages=find_packages(include=['mmdavit', 'mmdavit.*']),
    py_modules=['mmdavit_config_hook'],
    include_package_data=True,
    package_data={'mmdavit': ['.mim/model-index.yml', '.mim/configs/**/*.py', '.mim/configs/**/*.yml',
                              '.mim/tools/**/*']},
    cmdclass={'build_py': build_py_with_pth, 'editable_wheel': editable_wheel_with_pth},
    install_requires=requirements('requirements/runtime.txt'),
    extras_require={'tests': requirements('requirements/tests.txt'),
                    'deploy': requirements('requirements/deploy.txt')},
    zip_safe=False,
)
