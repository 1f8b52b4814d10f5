"""A missing dataset or pretrained checkpoint stops training with an error that says what to do."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

import mmdavit  # noqa: F401  (registers DaViTRunner)
from mmdavit.registry import RUNNERS
from tests.configs.tiny_runs import detection_overrides, make_tiny_data

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


def build_runner(cfg: Config, work_dir: Path) -> Runner:
    cfg.work_dir = str(work_dir)
    return RUNNERS.build(cfg)


@pytest.mark.parametrize('config,expected', [
    ('detection/maskrcnn_davit_t.py', ['data/coco/annotations/instances_train2017.json', 'cocodataset.org',
                                       'make demo']),
    ('segmentation/upernet_davit_t.py', ['data/ade/ADEChallengeData2016', 'ADEChallengeData2016.zip',
                                         'make demo']),
])
def test_missing_dataset_names_path_and_preparation(tmp_path, monkeypatch, config, expected):
    monkeypatch.chdir(tmp_path)  # no data/ here
    cfg = Config.fromfile(str(CONFIGS / config))
    assert cfg.runner_type == 'mmdavit.DaViTRunner'
    runner = build_runner(cfg, tmp_path / 'work')
    with pytest.raises(FileNotFoundError) as info:
        runner.train()
    message = str(info.value)
    for text in expected:
        assert text in message


def test_missing_pretrained_checkpoint_says_how_to_get_it(tmp_path, monkeypatch):
    data = make_tiny_data(tmp_path / 'data')
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here
    cfg = Config.fromfile(str(CONFIGS / 'detection/maskrcnn_davit_t_synthetic.py'))
    overrides = tmp_path / 'overrides.py'
    overrides.write_text(detection_overrides(data['coco']))
    cfg.merge_from_dict(Config.fromfile(str(overrides)).to_dict())
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint='checkpoints/davit_t.pth')
    runner = build_runner(cfg, tmp_path / 'work')
    with pytest.raises(FileNotFoundError) as info:
        runner.train()
    assert 'checkpoints/davit_t.pth' in str(info.value)
    assert '--cfg-options model.backbone.init_cfg=None' in str(info.value)


def test_pretrained_by_name_offline_says_how_to_place_the_file(tmp_path, monkeypatch):
    """The paper configs load their weights by name (hf-hub://); without network and without the file in the
    Hugging Face cache, training stops with the error that says how to place the file or pass a path."""
    from huggingface_hub import constants  # read at call time: this is what HF_HUB_OFFLINE / HF_HOME set
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf' / 'hub'))
    data = make_tiny_data(tmp_path / 'data')
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(str(CONFIGS / 'detection/maskrcnn_davit_t_synthetic.py'))
    overrides = tmp_path / 'overrides.py'
    overrides.write_text(detection_overrides(data['coco']))
    cfg.merge_from_dict(Config.fromfile(str(overrides)).to_dict())
    paper = Config.fromfile(str(CONFIGS / 'detection/maskrcnn_davit_t.py'))
    cfg.model.backbone.init_cfg = paper.model.backbone.init_cfg  # weights by name
    runner = build_runner(cfg, tmp_path / 'work')
    with pytest.raises(FileNotFoundError) as info:
        runner.train()
    message = str(info.value)
    assert message.startswith('hf-hub://timm/davit_tiny.msft_in1k: none of model.safetensors')
    assert 'downloads are off (HF_HUB_OFFLINE=1)' in message
    assert '`hf download timm/davit_tiny.msft_in1k model.safetensors' in message
    assert 'give the path checkpoints/davit_tiny.msft_in1k/model.safetensors instead of the name' in message
