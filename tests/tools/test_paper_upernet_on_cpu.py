"""The paper UperNet config (SyncBN heads, for 8 GPUs) trains on the CPU, also under a distributed launcher."""
import os
import socket
import sys

import pytest
import torch
from mmengine.config import Config

from tests.commands import run
from tests.configs.tiny_runs import make_tiny_data
from tests.tools.common import REPO, TOOLS

PAPER_CONFIG = REPO / 'configs' / 'segmentation' / 'upernet_davit_t.py'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_paper_heads_use_syncbn():
    cfg = Config.fromfile(str(PAPER_CONFIG))
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN' and cfg.model.auxiliary_head.norm_cfg.type == 'SyncBN'


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='with CUDA the launcher runs SyncBN on the GPU')
def test_paper_config_trains_under_a_cpu_launcher(tmp_path):
    # One process under --launcher pytorch (what tools/dist_train.sh does): torch's SyncBatchNorm raises
    # "expected input tensor to be on GPU" on CPU tensors as soon as a process group exists.
    data = make_tiny_data(tmp_path / 'data')
    config = tmp_path / 'paper_upernet_tiny.py'
    config.write_text(f'''_base_ = {str(PAPER_CONFIG)!r}
crop_size = (64, 64)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root={data['ade']!r}, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root={data['ade']!r}))
train_cfg = dict(max_iters=1, val_interval=100)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=1)]
default_hooks = dict(checkpoint=dict(interval=100, save_last=False), logger=dict(interval=1))
''')
    env = dict(os.environ, RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()))
    result = run([sys.executable, TOOLS / 'train.py', config, '--launcher', 'pytorch', '--work-dir', tmp_path / 'work'],
                 cwd=tmp_path, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert 'Distributed training: True' in output
    assert 'SyncBatchNorm needs GPUs' in output
    assert 'Iter(train) [1/1]' in output
