"""tools/analysis/onnx_benchmark.py end to end on a very small model: a narrow-DaViT UperNet at 64 x 64 with
random weights, exported with the TorchScript exporter (every supported torch), one timed round."""
import sys

from tests.commands import run
from tests.tools.common import REPO, TOOLS

NARROW_UPERNET = f'''
_base_ = {str(REPO / 'configs' / 'segmentation' / 'upernet_davit_t_synthetic.py')!r}
model = dict(
    data_preprocessor=dict(size=(64, 64)),
    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
                  init_cfg=None),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=16),
    auxiliary_head=dict(in_channels=128, channels=16))
'''


def test_onnx_benchmark_prints_times_and_ratio(tmp_path):
    config = tmp_path / 'upernet_narrow.py'
    config.write_text(NARROW_UPERNET)
    output = run([sys.executable, TOOLS / 'analysis' / 'onnx_benchmark.py', '--model', config, 64, 64,
                  '--repeats', 1, '--threads', 1, '--exporter', 'torchscript', '--work-dir', tmp_path / 'onnx'],
                 cwd=tmp_path).stdout
    assert 'CPU: ' in output and '1 threads for both engines' in output
    assert 'upernet_narrow 64x64 pytorch: ' in output and 'upernet_narrow 64x64 onnxruntime: ' in output
    ratio_lines = [line for line in output.splitlines() if line.startswith('ratio upernet_narrow 64x64: ')]
    assert len(ratio_lines) == 1 and 'ONNX Runtime / PyTorch eager = ' in ratio_lines[0], output
    assert (tmp_path / 'onnx' / 'upernet_narrow_64x64.onnx').is_file()
