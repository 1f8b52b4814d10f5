"""Every shipped config loads, builds, and carries the official recipe's numbers."""
import re
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'configs'
DETECTION = sorted(p.stem for p in (CONFIGS / 'detection').glob('*.py'))
SEGMENTATION = sorted(p.stem for p in (CONFIGS / 'segmentation').glob('*.py'))

# Full-model parameters (M) from the paper: Mask R-CNN / RetinaNet with 80 classes, UperNet with 150.
PAPER_PARAMS = {
    'maskrcnn_davit_t': 47.8, 'maskrcnn_davit_s': 69.2, 'maskrcnn_davit_b': 107.3,
    'retinanet_davit_t': 38.5, 'retinanet_davit_s': 59.9, 'retinanet_davit_b': 98.5,
    'upernet_davit_t': 60, 'upernet_davit_s': 81, 'upernet_davit_b': 121,
}
ARCH = {'t': 'tiny', 's': 'small', 'b': 'base'}


def load(name: str) -> Config:
    folder = 'segmentation' if name.startswith('upernet') else 'detection'
    return Config.fromfile(str(CONFIGS / folder / f'{name}.py'))


def build_model(cfg: Config):
    import mmdavit  # noqa: F401
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    __import__(f'{scope}.utils', fromlist=['register_all_modules']).register_all_modules(init_default_scope=False)
    cfg.model.backbone.init_cfg = None
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg.model)


def test_expected_files_exist():
    for name in ['maskrcnn_davit_{}', 'maskrcnn_davit_{}_3x', 'retinanet_davit_{}', 'retinanet_davit_{}_3x']:
        for v in 'tsb':
            assert name.format(v) in DETECTION
    for v in 'tsb':
        assert f'upernet_davit_{v}' in SEGMENTATION


@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_param_count_matches_paper(name):
    cfg = load(name)
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.01, f'{name}: {params:.2f}M'
    assert model.backbone.arch['embed_dims'] == {'t': 96, 's': 96, 'b': 128}[name[-1]]


@pytest.mark.parametrize('name', [n for n in DETECTION if re.fullmatch(r'(maskrcnn|retinanet)_davit_[tsb](_3x)?', n)])
def test_detection_recipe(name):
    cfg = load(name)
    variant = name.split('_')[2]
    three_x = name.endswith('_3x')
    assert cfg.custom_imports == dict(imports=['mmdavit'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == 'mmdavit.DaViT' and backbone.arch == ARCH[variant]
    assert backbone.drop_path_rate == (0.2 if three_x else 0.1)
    # The official ImageNet-1k weights by name (timm's hub copies of them).
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=f'hf-hub://timm/davit_{ARCH[variant]}.msft_in1k')
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay) == \
        ('AdamW', 1e-4, (0.9, 0.999), 0.05)
    assert 'paramwise_cfg' not in cfg.optim_wrapper  # official: weight decay on every parameter
    assert cfg.train_cfg.max_epochs == (36 if three_x else 12)
    step = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR'][0]
    assert step.milestones == ([27, 33] if three_x else [8, 11]) and step.gamma == 0.1
    warmup = [s for s in cfg.param_scheduler if s.type == 'LinearLR'][0]
    assert (warmup.start_factor, warmup.end, warmup.by_epoch) == (0.001, 500, False)
    assert cfg.train_dataloader.batch_size * 8 == 16 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.data_root == 'data/coco/'
    pipeline = cfg.train_dataloader.dataset.pipeline
    flip = [t for t in pipeline if t.type == 'RandomFlip'][0]
    assert flip.prob == 0.5
    choice = [t for t in pipeline if t.type == 'RandomChoice'][0]
    multi_scale, crop_branch = choice.transforms
    assert [s[0] for s in multi_scale[0].scales] == list(range(480, 801, 32))
    assert all(s[1] == 1333 for s in multi_scale[0].scales)
    assert [s[0] for s in crop_branch[0].scales] == [400, 500, 600]
    assert crop_branch[1].type == 'RandomCrop' and tuple(crop_branch[1].crop_size) == (384, 600)
    assert crop_branch[2].scales == multi_scale[0].scales
    assert cfg.model.data_preprocessor.pad_size_divisor == 32
    assert cfg.model.neck.out_channels == 256 and cfg.model.neck.num_outs == 5
    with_mask = any(t.type == 'LoadAnnotations' and t.get('with_mask') for t in pipeline)
    assert with_mask == name.startswith('maskrcnn')


@pytest.mark.parametrize('name', [n for n in SEGMENTATION if re.fullmatch(r'upernet_davit_[tsb]', n)])
def test_segmentation_recipe(name):
    cfg = load(name)
    variant = name.split('_')[2]
    assert cfg.model.backbone.arch == ARCH[variant] and cfg.model.backbone.drop_path_rate == 0.3
    assert cfg.model.backbone.init_cfg.checkpoint == f'hf-hub://timm/davit_{ARCH[variant]}.msft_in1k'
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.decode_head.channels == 512
    dims = {'t': 96, 's': 96, 'b': 128}[variant]
    assert cfg.model.decode_head.in_channels == [dims, 2 * dims, 4 * dims, 8 * dims]
    aux = cfg.model.auxiliary_head
    assert (aux.type, aux.in_index, aux.in_channels, aux.loss_decode.loss_weight) == ('FCNHead', 2, 4 * dims, 0.4)
    assert cfg.model.decode_head.num_classes == 150 == aux.num_classes
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, tuple(optimizer.betas), optimizer.weight_decay) == \
        ('AdamW', 6e-5, (0.9, 0.999), 0.01)
    assert 'paramwise_cfg' not in cfg.optim_wrapper
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR', 1e-6, 1500)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ('PolyLR', 1.0, 0.0, 1500, 160000)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == 16
    assert tuple(cfg.crop_size) == (512, 512)
    crop = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop'][0]
    assert tuple(crop.crop_size) == (512, 512)
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
