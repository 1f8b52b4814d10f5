"""Torch files are read without running their code on every supported torch (2.1: restricted unpickler, no
allow-list API; 2.4+: torch's allow-list), on every path a checkpoint takes, and mmengine's own checkpoints
still load."""
import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.runner import CheckpointLoader

from mmdavit import compat
from mmdavit.compat import RefusedCheckpoint, load_torch_file
from tests.conftest import requires_openmmlab
from tests.engine.toys import ToyClassifier, runner_kwargs
from tests.tools.common import DET_CONFIG, TOOLS

REPO = TOOLS.parent


class RunsCode:
    """Pickles as a call to ``os.mkdir``: a load that ran the file's code would create the folder."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


@pytest.fixture
def code_pickle(tmp_path):
    """A checkpoint of real tensors with one code-running object in its meta, and the folder it would create."""
    marker = tmp_path / 'created_by_the_pickle'
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': ToyClassifier().state_dict(), 'meta': {'payload': RunsCode(str(marker))}}, path)
    return path, marker


def assert_refused(message: str, path, marker: Path):
    assert not marker.exists(), 'the pickle ran'
    assert f'Refused to read {path}: its pickle would import or call code' in message, message
    assert 'mkdir' in message, message
    for misleading in ('weights_only` set to `False', 'weights_only=False', 'complete'):
        assert misleading not in message, message


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory) -> Path:
    """A real mmengine checkpoint: message hub (HistoryBuffer), numpy values, scheduler and loop states."""
    from mmdavit import DaViTRunner
    work_dir = tmp_path_factory.mktemp('run')
    DaViTRunner(**runner_kwargs(work_dir, max_iters=2)).train()
    return work_dir / 'iter_2.pth'


@pytest.mark.parametrize('forced_old_path', [False, True], ids=['this torch', 'restricted unpickler'])
def test_mmengine_checkpoint_loads_equal_on_both_paths(runner_checkpoint, monkeypatch, forced_old_path):
    """The restricted unpickler (torch < 2.4) reads a runner checkpoint exactly as torch's own weights-only load."""
    monkeypatch.setattr(compat, '_HAS_ALLOW_LIST', compat._HAS_ALLOW_LIST and not forced_old_path)
    loaded = load_torch_file(str(runner_checkpoint), 'cpu')
    hub = loaded['message_hub']['log_scalars']
    assert {'train/loss', 'train/lr'} <= set(hub) and len(hub['train/loss']._log_history) == 2
    reference = torch.load(runner_checkpoint, map_location='cpu', weights_only=False)  # our own file: trusted
    for key, tensor in reference['state_dict'].items():
        assert torch.equal(loaded['state_dict'][key], tensor), key
    assert loaded['meta']['seed'] == reference['meta']['seed']
    assert loaded['optimizer']['param_groups'] == reference['optimizer']['param_groups']


@pytest.mark.parametrize('forced_old_path', [False, True], ids=['this torch', 'restricted unpickler'])
def test_code_running_pickle_is_refused_on_both_paths(code_pickle, monkeypatch, forced_old_path):
    monkeypatch.setattr(compat, '_HAS_ALLOW_LIST', compat._HAS_ALLOW_LIST and not forced_old_path)
    path, marker = code_pickle
    with pytest.raises(RefusedCheckpoint) as info:
        load_torch_file(str(path))
    assert_refused(str(info.value), path, marker)


@pytest.mark.parametrize('forced_old_path', [False, True], ids=['this torch', 'restricted unpickler'])
def test_numpy_numbers_and_torch_dtypes_in_meta_load(tmp_path, monkeypatch, forced_old_path):
    monkeypatch.setattr(compat, '_HAS_ALLOW_LIST', compat._HAS_ALLOW_LIST and not forced_old_path)
    meta = {'int16': np.int16(7), 'uint32': np.uint32(3), 'half': np.float16(0.5), 'array': np.arange(3, dtype='i2'),
            'dtypes': [torch.bfloat16, torch.bool, torch.uint8]}
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': meta}, tmp_path / 'numpy.pth')
    loaded = load_torch_file(str(tmp_path / 'numpy.pth'))['meta']
    assert loaded['int16'] == 7 and loaded['int16'].dtype == np.int16 and loaded['half'] == 0.5
    assert loaded['array'].tolist() == [0, 1, 2] and loaded['array'].dtype == np.int16
    assert loaded['dtypes'] == [torch.bfloat16, torch.bool, torch.uint8]


def test_mmengine_loader_refuses_code_for_load_from_resume_and_checkpoint(code_pickle):
    """load_from, resume, ``--checkpoint`` and mmdet's ``init_detector`` all read through CheckpointLoader."""
    path, marker = code_pickle
    with pytest.raises(RefusedCheckpoint) as info:
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert_refused(str(info.value), path, marker)


def test_runner_load_from_refuses_code(code_pickle, tmp_path):
    from mmdavit import DaViTRunner
    path, marker = code_pickle
    runner = DaViTRunner(**runner_kwargs(tmp_path / 'work', max_iters=1, load_from=str(path)))
    with pytest.raises(RefusedCheckpoint) as info:
        runner.load_or_resume()
    assert_refused(str(info.value), path, marker)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """Files under the yielded folder served at the yielded base URL (loopback only); torch's hub cache in tmp."""
    root = tmp_path / 'served'
    root.mkdir()
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    yield root, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()


def test_urls_are_read_safely(http_root, code_pickle, runner_checkpoint):
    root, url = http_root
    path, marker = code_pickle
    (root / 'code.pth').write_bytes(path.read_bytes())
    (root / 'run.pth').write_bytes(runner_checkpoint.read_bytes())
    loaded = CheckpointLoader.load_checkpoint(f'{url}/run.pth', map_location='cpu')
    assert 'train/loss' in loaded['message_hub']['log_scalars']
    with pytest.raises(RefusedCheckpoint) as info:
        CheckpointLoader.load_checkpoint(f'{url}/code.pth', map_location='cpu')
    assert not marker.exists() and 'would import or call code' in str(info.value)


def run_tool(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_converter_refuses_code(code_pickle, tmp_path):
    path, marker = code_pickle
    converter = run_tool([REPO / 'tools/model_converters/davit2mmdavit.py', path, tmp_path / 'out.pth'], tmp_path)
    assert converter.returncode != 0 and 'Traceback' not in converter.stderr, converter.stderr[-2000:]
    assert_refused(converter.stderr, path, marker)


@requires_openmmlab
def test_infer_refuses_code(code_pickle, tmp_path):
    """``tools/infer.py`` as users run it (``tools/test.py --checkpoint`` sets load_from: tested above)."""
    path, marker = code_pickle
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((64, 80, 3), np.uint8))
    inferred = run_tool([TOOLS / 'infer.py', DET_CONFIG, path, image, '--out-dir', tmp_path / 'vis'], tmp_path)
    assert inferred.returncode != 0
    assert_refused(inferred.stdout + inferred.stderr, path, marker)
