"""`mmdavit::` bases and mim, from a folder outside the repository, in fresh interpreters."""
import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.commands import run as run_checked
from tests.configs.tiny_runs import detection_overrides, make_tiny_data, segmentation_overrides

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def run(args, cwd) -> str:
    """Standard output of ``args`` (Python warnings silenced); the test fails if it exits non-zero."""
    return run_checked(args, cwd, env=dict(os.environ, PYTHONWARNINGS='ignore'), timeout=600).stdout


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp('downstream')
    return root, make_tiny_data(root / 'data')


def test_startup_hook_is_cheap_and_registers_scope(tmp_path):
    out = run([sys.executable, '-c', 'import sys; print(sorted(m for m in ("torch", "mmengine", "mmdavit") '
               'if m in sys.modules)); from mmengine.config.utils import MODULE2PACKAGE; '
               'print(MODULE2PACKAGE["mmdavit"])'], cwd=tmp_path)
    assert out.split('\n')[:2] == ['[]', 'mmdavit']


def startup_line() -> str:
    """The .pth line setup.py installs (read from setup.py's source: running it would call setup())."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    values = [ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == 'PTH_LINE']
    assert len(values) == 1
    return values[0]


@pytest.mark.parametrize('module_present', [False, True])
def test_startup_line_is_silent_when_the_checkout_is_gone(tmp_path, module_present):
    # A site folder holding only our .pth, processed as site.py processes site-packages. Without the module
    # (an editable checkout moved or deleted) the line must do nothing: no traceback at every Python start.
    site_dir = tmp_path / 'site'
    site_dir.mkdir()
    (site_dir / 'mmdavit-config-hook.pth').write_text(startup_line())
    path = [str(ROOT)] if module_present else []
    code = (f'import sys; sys.path[:0] = {path!r}; import site; site.addsitedir({str(site_dir)!r}); '
            'print([type(f).__name__ for f in sys.meta_path].count("_PatchAfterImport"))')
    result = subprocess.run([sys.executable, '-I', '-S', '-c', code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert result.stdout.strip() == ('1' if module_present else '0')


def test_import_mmdavit_enables_bases_without_the_startup_hook(tmp_path):
    # `python -S` with the checkout and site-packages on sys.path: no .pth file runs (as with PYTHONPATH-only
    # set-ups or `pip install --target`). mmengine's config module is imported first, so the patches that
    # `import mmdavit` installs must reach modules that are already loaded.
    (tmp_path / 'my.py').write_text("_base_ = 'mmdavit::segmentation/upernet_davit_t_synthetic.py'\n"
                                    'model = dict(decode_head=dict(num_classes=3))\n')
    code = (f'import sys; sys.path[:0] = [{str(ROOT)!r}, {sysconfig.get_paths()["purelib"]!r}]\n'
            'from mmengine.config import Config\n'
            'print("RESULT", "mmdavit_config_hook" in sys.modules)\n'
            'import mmdavit\n'
            'cfg = Config.fromfile("my.py")\n'
            'print("RESULT", cfg.model.decode_head.num_classes, cfg.model.backbone.type, cfg.default_scope)\n')
    out = [line[len('RESULT '):] for line in run([sys.executable, '-S', '-c', code], cwd=tmp_path).split('\n')
           if line.startswith('RESULT ')]
    assert out == ['False', '3 mmdavit.DaViT mmseg']


def test_misspelt_base_gets_one_error_listing_every_config(tmp_path):
    (tmp_path / 'my.py').write_text("_base_ = 'mmdavit::detection/maskrcnn_davit_tt.py'\n")
    result = subprocess.run([sys.executable, '-c', 'from mmengine.config import Config; Config.fromfile("my.py")'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert result.returncode != 0
    error = result.stderr
    assert error.count('Traceback') == 1, error
    message = error.strip().splitlines()[-1]
    assert message.startswith('FileNotFoundError: ') and "'mmdavit::detection/maskrcnn_davit_tt.py'" in message
    assert 'Did you mean mmdavit::detection/maskrcnn_davit_t.py?' in message
    shipped = sorted(path.relative_to(ROOT / 'configs').as_posix() for path in (ROOT / 'configs').rglob('*.py'))
    assert any(name.endswith('_synthetic.py') for name in shipped) and any('_lrd' in name for name in shipped)
    assert all(name in message for name in shipped), message


@pytest.mark.parametrize('kind', ['detection', 'segmentation'])
def test_downstream_config_overrides_and_builds(workspace, kind):
    root, data = workspace
    if kind == 'detection':
        body = ("_base_ = 'mmdavit::detection/maskrcnn_davit_t_synthetic.py'\n"
                'model = dict(roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)))\n'
                + detection_overrides(data['coco']))
        check = ('m = MODELS.build(cfg.model); assert m.roi_head.bbox_head.num_classes == 3; '
                 'print("RESULT", type(m).__name__, type(m.backbone).__module__)')
    else:
        body = ("_base_ = 'mmdavit::segmentation/upernet_davit_t_synthetic.py'\n"
                'model = dict(decode_head=dict(num_classes=3))\n' + segmentation_overrides(data['ade']))
        check = ('m = MODELS.build(cfg.model); assert m.decode_head.num_classes == 3; '
                 'print("RESULT", type(m).__name__, type(m.backbone).__module__)')
    (root / f'my_{kind}.py').write_text(body)
    scope = 'mmdet' if kind == 'detection' else 'mmseg'
    code = (f'from mmengine.config import Config\nfrom mmengine.registry import init_default_scope\n'
            f'cfg = Config.fromfile("my_{kind}.py")\nimport mmdavit\ninit_default_scope("{scope}")\n'
            f'from {scope}.registry import MODELS, DATASETS\n'
            f'{check}\n'
            # The dataset builds its transforms from our (inherited) pipeline: they must resolve in mmdet/mmseg.
            f'ds = DATASETS.build(cfg.train_dataloader.dataset); print("RESULT", len(ds), type(ds[0]["inputs"]).__name__)\n')
    out = [line[len('RESULT '):] for line in run([sys.executable, '-c', code], cwd=root).split('\n')
           if line.startswith('RESULT ')]
    expected_model = 'MaskRCNN' if kind == 'detection' else 'EncoderDecoder'
    assert out[0] == f'{expected_model} mmdavit.models.davit'
    assert out[1] == '4 Tensor'


@pytest.mark.slow
def test_mim_train_and_test_mmdet_from_elsewhere(workspace):
    root, data = workspace
    config = root / 'my_maskrcnn.py'
    config.write_text("_base_ = 'mmdavit::detection/maskrcnn_davit_t_synthetic.py'\n" + detection_overrides(data['coco']))
    run([str(BIN / 'mim'), 'train', 'mmdet', str(config), '--work-dir', 'wd_det'], cwd=root)
    assert (root / 'wd_det' / 'epoch_1.pth').is_file()
    out = run([str(BIN / 'mim'), 'test', 'mmdet', str(config), '--checkpoint', 'wd_det/epoch_1.pth',
               '--work-dir', 'wd_det_test'], cwd=root)
    assert 'coco/bbox_mAP' in out + ''.join(p.read_text() for p in (root / 'wd_det_test').rglob('*.log'))


@pytest.mark.slow
def test_mim_train_mmseg_from_elsewhere(workspace):
    root, data = workspace
    config = root / 'my_upernet.py'
    config.write_text("_base_ = 'mmdavit::segmentation/upernet_davit_t_synthetic.py'\n"
                      + segmentation_overrides(data['ade']))
    run([str(BIN / 'mim'), 'train', 'mmseg', str(config), '--work-dir', 'wd_seg'], cwd=root)
    assert (root / 'wd_seg' / 'iter_2.pth').is_file()
    scalars = next((root / 'wd_seg').glob('*/vis_data/scalars.json')).read_text().splitlines()
    assert any('mIoU' in json.loads(line) for line in scalars)


def test_shipped_config_found_by_mim_in_package(tmp_path):
    """`mim train mmdavit NAME` finds a config shipped in mmdavit/.mim/configs from any folder."""
    from mim.utils import get_installed_path
    package = Path(get_installed_path('mmdavit'))
    assert (package / '.mim' / 'configs' / 'detection' / 'maskrcnn_davit_t.py').is_file()
    assert (package / '.mim' / 'model-index.yml').is_file()
