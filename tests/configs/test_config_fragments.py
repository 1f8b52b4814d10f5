"""The synthetic twins take their data from the configs/_base_/datasets fragments and otherwise differ from
their paper config only where they say so."""
import ast
import copy
import json
from pathlib import Path

import pytest
from mmengine.config import Config

from mmdavit.datasets.synthetic import ADE_METAINFO, COCO_METAINFO

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'
COCO_FRAGMENT = '_base_/datasets/synthetic_coco_instance.py'
ADE_FRAGMENT = '_base_/datasets/synthetic_ade20k.py'

# What tools/generate_synthetic_data.py writes (the layouts in mmdavit/datasets/synthetic.py's docstring).
COCO_ROOT = 'data/synthetic/coco/'
ADE_ROOT = 'data/synthetic/ade'
FRAGMENT_DATA = {
    COCO_FRAGMENT: dict(
        synthetic_data_root=COCO_ROOT,
        synthetic_train_dataset=dict(data_root=COCO_ROOT, metainfo=COCO_METAINFO, data_prefix=dict(img='train2017/'),
                                     ann_file='annotations/instances_train2017.json'),
        synthetic_val_dataset=dict(data_root=COCO_ROOT, metainfo=COCO_METAINFO, data_prefix=dict(img='val2017/'),
                                   ann_file='annotations/instances_val2017.json'),
        synthetic_val_evaluator=dict(ann_file=COCO_ROOT + 'annotations/instances_val2017.json')),
    ADE_FRAGMENT: dict(
        synthetic_data_root=ADE_ROOT,
        synthetic_train_dataset=dict(
            type='BaseSegDataset', data_root=ADE_ROOT, metainfo=ADE_METAINFO, reduce_zero_label=True,
            data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')),
        synthetic_val_dataset=dict(
            type='BaseSegDataset', data_root=ADE_ROOT, metainfo=ADE_METAINFO, reduce_zero_label=True,
            data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'))),
}

# Every change a twin makes to its paper config's model and optimizer, as in the twin's comments: dotted paths
# ('*' for every element of a list) and the twin's values. Anything not listed must equal the paper's.
FROM_SCRATCH = {'model.backbone.init_cfg': None, 'optim_wrapper.optimizer.lr': 4e-4}
FUSED_ADAMW = {'optim_wrapper.optimizer.fused': True}
MASKRCNN_CPU_HEADS = {
    'model.roi_head.bbox_head.num_classes': 4,
    'model.roi_head.mask_head.num_classes': 4,
    'model.roi_head.mask_head.num_convs': 2,
    'model.roi_head.mask_head.conv_out_channels': 128,
    'model.train_cfg.rpn_proposal.nms_pre': 1000,
    'model.train_cfg.rpn_proposal.max_per_img': 300,
    'model.train_cfg.rcnn.sampler.num': 32,
    'model.test_cfg.rpn.nms_pre': 500,
    'model.test_cfg.rpn.max_per_img': 100,
    'model.test_cfg.rcnn.max_per_img': 20,
}
UPERNET_CPU_HEADS = {
    'model.data_preprocessor.size': [128, 160],
    'model.decode_head.num_classes': 4,
    'model.decode_head.channels': 128,
    'model.decode_head.norm_cfg.type': 'BN',
    'model.auxiliary_head.num_classes': 4,
    'model.auxiliary_head.norm_cfg.type': 'BN',
}
TWINS = {  # twin: (paper config, data fragment, overrides)
    'detection/maskrcnn_davit_t_synthetic': (
        'detection/maskrcnn_davit_t', COCO_FRAGMENT, {**FROM_SCRATCH, **FUSED_ADAMW, **MASKRCNN_CPU_HEADS}),
    'detection/maskrcnn_davit_t_lrd_synthetic': (
        'detection/maskrcnn_davit_t_lrd', COCO_FRAGMENT, {**FROM_SCRATCH, **FUSED_ADAMW, **MASKRCNN_CPU_HEADS}),
    'detection/maskrcnn_florence2_base_synthetic': (
        'detection/maskrcnn_florence2_base', COCO_FRAGMENT, {**FROM_SCRATCH, **FUSED_ADAMW, **MASKRCNN_CPU_HEADS}),
    'detection/cascade_maskrcnn_davit_t_3x_synthetic': ('detection/cascade_maskrcnn_davit_t_3x', COCO_FRAGMENT, {
        **FROM_SCRATCH,
        'optim_wrapper.type': 'OptimWrapper',  # float32, not AMP
        'model.roi_head.bbox_head.*.num_classes': 4,
        'model.roi_head.bbox_head.*.norm_cfg.type': 'BN',
        'model.roi_head.mask_head.num_classes': 4,
        'model.train_cfg.rpn_proposal.nms_pre': 1000,
        'model.train_cfg.rpn_proposal.max_per_img': 100,
        'model.train_cfg.rcnn.*.sampler.num': 16,
        'model.test_cfg.rpn.nms_pre': 500,
        'model.test_cfg.rpn.max_per_img': 50,
        'model.test_cfg.rcnn.max_per_img': 20,
    }),
    'detection/dino_4scale_davit_t_12e_synthetic': ('detection/dino_4scale_davit_t_12e', COCO_FRAGMENT, {
        **FROM_SCRATCH,
        'model.num_queries': 100,
        'model.bbox_head.num_classes': 4,
        'model.dn_cfg.group_cfg.num_dn_queries': 20,
        'model.test_cfg.max_per_img': 100,
    }),
    'detection/mask2former_davit_t_lsj_50e_coco_synthetic': (
        'detection/mask2former_davit_t_lsj_50e_coco', COCO_FRAGMENT, {
            **FROM_SCRATCH,
            'model.data_preprocessor.batch_augments.0.size': [128, 160],
            'model.panoptic_head.num_things_classes': 4,
            'model.panoptic_head.loss_cls.class_weight': [1.0, 1.0, 1.0, 1.0, 0.1],
            'model.panoptic_fusion_head.num_things_classes': 4,
            'model.test_cfg.max_per_image': 20,
        }),
    'segmentation/upernet_davit_t_synthetic': (
        'segmentation/upernet_davit_t', ADE_FRAGMENT, {**FROM_SCRATCH, **FUSED_ADAMW, **UPERNET_CPU_HEADS}),
    'segmentation/upernet_davit_t_lrd_synthetic': (
        'segmentation/upernet_davit_t_lrd', ADE_FRAGMENT, {**FROM_SCRATCH, **FUSED_ADAMW, **UPERNET_CPU_HEADS}),
    'segmentation/mask2former_davit_t_160k_ade20k_synthetic': (
        'segmentation/mask2former_davit_t_160k_ade20k', ADE_FRAGMENT, {
            **FROM_SCRATCH,
            'model.data_preprocessor.size': [128, 160],
            'model.decode_head.num_classes': 4,
            'model.decode_head.loss_cls.class_weight': [1.0, 1.0, 1.0, 1.0, 0.1],
        }),
}


def load(name: str) -> dict:
    """The built config as plain JSON values (tuples become lists), so that only contents are compared."""
    return json.loads(json.dumps(Config.fromfile(str(CONFIGS / name)).to_dict()))


def plain(value):
    return json.loads(json.dumps(value))


def direct_bases(name: str) -> list:
    tree = ast.parse((CONFIGS / f'{name}.py').read_text())
    (value, ) = [node.value for node in tree.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == '_base_']
    bases = ast.literal_eval(value)
    return bases if isinstance(bases, list) else [bases]


def set_path(tree, path: list, value) -> None:
    """Sets ``value`` at ``path`` in nested dicts and lists; the leaf's parent must exist."""
    key, rest = path[0], path[1:]
    keys = range(len(tree)) if key == '*' else [int(key) if isinstance(tree, list) else key]
    for k in keys:
        if rest:
            set_path(tree[k], rest, value)
        else:
            tree[k] = copy.deepcopy(value)


@pytest.mark.parametrize('fragment', sorted(FRAGMENT_DATA))
def test_fragment_holds_the_generated_layout(fragment):
    # Compared as built, tuples and all: the metainfo is the generator's (COCO palettes as tuples, ADE's as lists).
    metainfo = COCO_METAINFO if fragment == COCO_FRAGMENT else ADE_METAINFO
    assert Config.fromfile(str(CONFIGS / fragment)).to_dict() == dict(FRAGMENT_DATA[fragment], metainfo=metainfo)


@pytest.mark.parametrize('twin', sorted(TWINS))
def test_twin_reads_its_data_from_the_fragment(twin):
    paper, fragment, _ = TWINS[twin]
    # The twin (or the twin it extends) inherits a paper config and the fragment side by side.
    bases = direct_bases(twin)
    while len(bases) == 1 and bases[0].endswith('_synthetic.py'):
        bases = direct_bases(f'{Path(twin).parent}/{bases[0][2:-3]}')
    assert len(bases) == 2 and bases[1] == f'../{fragment}', (twin, bases)

    cfg, data = load(f'{twin}.py'), plain(FRAGMENT_DATA[fragment])
    for loader, split in [('train_dataloader', 'train'), ('val_dataloader', 'val'), ('test_dataloader', 'val')]:
        dataset = cfg[loader]['dataset']
        for key, value in data[f'synthetic_{split}_dataset'].items():
            # data_prefix merges into the paper's (Mask2Former COCO keeps mmdet's unused panoptic 'seg' entry)
            found = {k: dataset[key][k] for k in value} if key == 'data_prefix' else dataset[key]
            assert found == value, (twin, loader, key)
    # The paper's helper variables follow.
    assert cfg['data_root'] == data['synthetic_data_root']
    assert cfg['metainfo'] == data['synthetic_train_dataset']['metainfo']
    if fragment == COCO_FRAGMENT:
        for evaluator in ('val_evaluator', 'test_evaluator'):
            assert cfg[evaluator]['ann_file'] == data['synthetic_val_evaluator']['ann_file'], (twin, evaluator)
    else:  # mmseg's IoU metric reads no file: the paper's evaluators stand
        paper_cfg = load(f'{paper}.py')
        assert (cfg['val_evaluator'], cfg['test_evaluator']) == (paper_cfg['val_evaluator'],
                                                                 paper_cfg['test_evaluator'])
        assert cfg['dataset_type'] == data['synthetic_train_dataset']['type']


@pytest.mark.parametrize('twin', sorted(TWINS))
def test_twin_model_and_optimizer_are_the_papers_but_for_the_listed_changes(twin):
    paper, _, overrides = TWINS[twin]
    cfg, expected = load(f'{twin}.py'), load(f'{paper}.py')
    for path, value in overrides.items():
        set_path(expected, path.split('.'), value)
    assert cfg['model'] == expected['model']
    assert cfg['optim_wrapper'] == expected['optim_wrapper']
