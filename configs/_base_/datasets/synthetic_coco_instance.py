# The synthetic COCO-format shapes that `make demo` generates (tools/generate_synthetic_data.py), read by the
# *_synthetic twins of the COCO configs. A twin inherits its paper config too, which already defines data_root,
# the dataloaders and the evaluators, and mmengine refuses a key that two bases define: so the settings here
# have names of their own and the twin puts them in place, e.g.
#     train_dataloader = dict(dataset=dict(_base_.synthetic_train_dataset, pipeline=train_pipeline))
synthetic_data_root = 'data/synthetic/coco/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[(230, 30, 30), (30, 190, 50), (40, 70, 230), (240, 210, 20)])
synthetic_train_dataset = dict(
    data_root=synthetic_data_root,
    metainfo=metainfo,
    ann_file='annotations/instances_train2017.json',
    data_prefix=dict(img='train2017/'))
synthetic_val_dataset = dict(
    data_root=synthetic_data_root,
    metainfo=metainfo,
    ann_file='annotations/instances_val2017.json',
    data_prefix=dict(img='val2017/'))
synthetic_val_evaluator = dict(ann_file=synthetic_data_root + 'annotations/instances_val2017.json')
