"""mmdet's DetInferencer and mmseg's MMSegInferencer take mmdavit's configs by ``mmdavit::`` name and by the
names of mmdavit's model index (mmengine reads a string that is not a file as a name of the scope's own model
index: "Cannot find model: mmdavit::... in mmdet"). mmdavit_config_hook.py teaches them, at interpreter start."""
import numpy as np
import pytest

SHAPES = ('circle', 'square', 'triangle', 'star')


def test_det_inferencer_takes_an_mmdavit_config_name():
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model='mmdavit::detection/maskrcnn_davit_t.py', device='cpu', show_progress=False)
    assert type(inferencer.model).__name__ == 'MaskRCNN' and type(inferencer.model.backbone).__name__ == 'DaViT'
    assert inferencer.cfg.model.backbone.drop_path_rate == 0.1  # the paper config's, read from mmdavit's folder


def test_det_inferencer_by_name_predicts():
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model='mmdavit::detection/maskrcnn_davit_t_synthetic.py', device='cpu',
                               show_progress=False)
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    result = inferencer(image, return_datasamples=True, no_save_pred=True)
    assert result['predictions'][0].pred_instances.bboxes.shape[1] == 4


def test_mmseg_inferencer_takes_an_mmdavit_config_name():
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model='mmdavit::segmentation/upernet_davit_t_synthetic.py', device='cpu')
    assert type(inferencer.model).__name__ == 'EncoderDecoder'
    assert type(inferencer.model.backbone).__name__ == 'DaViT' and inferencer.model.decode_head.num_classes == 4


def test_det_inferencer_takes_a_model_index_name():
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model='retinanet_davit_t', device='cpu', show_progress=False)
    assert type(inferencer.model).__name__ == 'RetinaNet' and type(inferencer.model.backbone).__name__ == 'DaViT'


def test_model_index_name_of_another_package_says_which_inferencer():
    from mmdet.apis import DetInferencer
    with pytest.raises(ValueError, match="upernet_davit_t is an mmdavit mmseg config, not mmdet: use that "
                                         "package's inferencer"):
        DetInferencer(model='upernet_davit_t', device='cpu')


def test_misspelt_mmdavit_name_lists_the_configs():
    from mmdet.apis import DetInferencer
    with pytest.raises(FileNotFoundError, match=r'Did you mean mmdavit::detection/maskrcnn_davit_t\.py\?'):
        DetInferencer(model='mmdavit::detection/maskrcnn_davit_tt.py', device='cpu')


def test_unknown_name_keeps_mmengines_error():
    from mmdet.apis import DetInferencer
    with pytest.raises(ValueError, match='Cannot find model: no_such_model in mmdet'):
        DetInferencer(model='no_such_model', device='cpu')
