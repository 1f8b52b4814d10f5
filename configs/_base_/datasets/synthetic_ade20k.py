# The synthetic ADE-format shapes that `make demo` generates (tools/generate_synthetic_data.py), read by the
# *_synthetic twins of the ADE20K configs. A twin inherits its paper config too, which already defines data_root
# and the dataloaders, and mmengine refuses a key that two bases define: so the settings here have names of
# their own and the twin puts them in place, e.g.
#     train_dataloader = dict(dataset=dict(_base_.synthetic_train_dataset, pipeline=train_pipeline))
synthetic_data_root = 'data/synthetic/ade'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[[230, 30, 30], [30, 190, 50], [40, 70, 230], [240, 210, 20]])
# BaseSegDataset: mmseg's ADE20KDataset only accepts subsets of the 150 ADE classes as metainfo.
synthetic_train_dataset = dict(
    type='BaseSegDataset',
    data_root=synthetic_data_root,
    metainfo=metainfo,
    reduce_zero_label=True,
    data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'))
synthetic_val_dataset = dict(
    type='BaseSegDataset',
    data_root=synthetic_data_root,
    metainfo=metainfo,
    reduce_zero_label=True,
    data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'))
