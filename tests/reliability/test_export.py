"""Deployment paths for the backbone: ``torch.jit.trace``, ONNX (opset 17, checked with onnxruntime) and
``torch.compile``, at a fixed size (224 x 224, no padding anywhere) and an odd one (97 x 131, padding at
every stage).

Measured on CPU (DaViT-T, random weights, at both sizes): onnxruntime vs torch max abs difference 3e-6
(stride 4) to 1.5e-5 (stride 32); trace vs eager 0; torch.compile (inductor, narrow DaViT) vs eager 3e-6.
Asserted: 1e-4.

A trace or an ONNX graph is valid for the input size it was made at: the backbone's padding decisions are
Python branches, which tracing records as constants, so at another size the graph can return features of the
wrong size or value without an error (and ``dynamic_axes`` does not change that). Export once per input size.

Florence-2's channel attention v2 scales by N^-1/2, N the token count of the stage map: the graphs record it
as ops on the input's shape, not as a constant of the size they were made at. Tested by making the graph at
384 x 384 and running it at 768 x 384, where nothing is padded either (every stage map a multiple of the window
12): a constant N made that run differ from eager by up to 0.25. Measured: trace 3e-6, onnxruntime 4.5e-6.
"""
import warnings

import pytest
import torch

from mmdavit.compat import torch_at_least
from mmdavit.models import DaViT
from tests.models.reference import perturb_

# The TorchScript-based exporter: torch >= 2.5 defaults to the dynamo one (which needs onnxscript), older torch
# has only this one and no `dynamo` argument.
TORCHSCRIPT_EXPORTER = {'dynamo': False} if torch_at_least('2.5') else {}

# Florence-2's blocks (overlapping downsample, channel attention v2, window 12) in a narrow tower.
NARROW_FLORENCE2 = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=12,
                        downsample='overlap', channel_attention='v2')
FLORENCE2_SIZES = [(384, 384), (768, 384)]  # made at the first, run at both

SIZES = [(224, 224), (97, 131)]
TOLERANCE = 1e-4


def size_id(size):
    return f'{size[0]}x{size[1]}'


@pytest.fixture(scope='module')
def tiny():
    return perturb_(DaViT('tiny', drop_path_rate=0.0)).eval()


def assert_close_features(actual, expected, what):
    assert len(actual) == len(expected) == 4
    for stage, (a, e) in enumerate(zip(actual, expected)):
        a = torch.as_tensor(a)
        assert a.shape == e.shape, f'{what}, stage {stage}: shape {tuple(a.shape)} != {tuple(e.shape)}'
        diff = (a - e).abs().max().item()
        assert diff <= TOLERANCE, f'{what}, stage {stage}: max abs diff {diff:.2e}'


@pytest.mark.parametrize('size', SIZES, ids=size_id)
def test_jit_trace_matches_eager(tiny, size):
    example = torch.randn(2, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarnings about the (size-specialised) padding branches
        traced = torch.jit.trace(tiny, example)  # check_trace re-runs the graph and compares
    images = torch.randn(2, 3, *size)  # other values, same size
    with torch.no_grad():
        assert_close_features(traced(images), tiny(images), f'trace at {size_id(size)}')


@pytest.mark.parametrize('size', SIZES, ids=size_id)
def test_onnx_export_matches_onnxruntime(tiny, size, tmp_path):
    import onnx
    import onnxruntime
    path = tmp_path / f'davit_t_{size_id(size)}.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(tiny, (torch.randn(1, 3, *size), ), str(path), opset_version=17, **TORCHSCRIPT_EXPORTER,
                          input_names=['images'], output_names=[f'stage{i}' for i in range(4)])
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(op.version for op in model.opset_import if op.domain in ('', 'ai.onnx')) >= 17

    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    images = torch.randn(1, 3, *size)
    outputs = session.run(None, {'images': images.numpy()})
    with torch.no_grad():
        assert_close_features([torch.from_numpy(o) for o in outputs], tiny(images), f'onnx at {size_id(size)}')


@pytest.fixture(scope='module')
def narrow_florence2():
    return perturb_(DaViT(NARROW_FLORENCE2, drop_path_rate=0.0)).eval()


def test_florence2_trace_keeps_token_count_dynamic(narrow_florence2):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(narrow_florence2, torch.randn(1, 3, *FLORENCE2_SIZES[0]))
    for size in FLORENCE2_SIZES:
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert_close_features(traced(images), narrow_florence2(images), f'trace run at {size_id(size)}')


def test_florence2_onnx_keeps_token_count_dynamic(narrow_florence2, tmp_path):
    import onnxruntime
    path = tmp_path / 'florence2_narrow.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(narrow_florence2, (torch.randn(1, 3, *FLORENCE2_SIZES[0]), ), str(path), opset_version=17,
                          **TORCHSCRIPT_EXPORTER, input_names=['images'], output_names=[f'stage{i}' for i in range(4)],
                          dynamic_axes={'images': {2: 'height', 3: 'width'}})
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for size in FLORENCE2_SIZES:
        images = torch.randn(1, 3, *size)
        outputs = session.run(None, {'images': images.numpy()})
        with torch.no_grad():
            assert_close_features([torch.from_numpy(o) for o in outputs], narrow_florence2(images),
                                  f'onnx run at {size_id(size)}')


@pytest.mark.slow
def test_torch_compile_matches_eager(tmp_path, monkeypatch):
    """Inductor on the CPU, one static graph per size. A narrow DaViT (the same modules, one layer per stage)
    keeps the compile under a minute per size on two cores (DaViT-T took ~60 s for one size)."""
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'inductor'))  # not the user's /tmp cache
    torch._dynamo.reset()
    model = perturb_(DaViT(dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)), drop_path_rate=0.0))
    model.eval()
    compiled = torch.compile(model, dynamic=False)
    try:
        for size in SIZES:
            images = torch.randn(1, 3, *size)
            with torch.no_grad():
                assert_close_features(compiled(images), model(images), f'compile at {size_id(size)}')
    finally:
        torch._dynamo.reset()
