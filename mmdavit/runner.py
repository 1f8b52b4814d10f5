"""mmengine's Runner, with missing-dataset errors that say how to prepare the data.

Selected in our configs by ``runner_type = 'mmdavit.DaViTRunner'``, which mmdet's and mmseg's train/test
scripts (and therefore ``mim train``/``mim test``) honour. It changes nothing else.
"""
from typing import Dict, Optional, Union

from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mmdavit.registry import RUNNERS

DATASET_HINTS = {
    'CocoDataset': ('COCO: download train2017.zip, val2017.zip and annotations_trainval2017.zip from '
                    'cocodataset.org and unpack them so that data/coco/{train2017,val2017,annotations} exist '
                    '(README, "Real data"); or set train_dataloader.dataset.data_root (and the val/test ones and '
                    'val_evaluator.ann_file) to where your copy lives.'),
    'ADE20KDataset': ('ADE20K: download ADEChallengeData2016.zip (MIT Scene Parsing benchmark) and unzip it into '
                      'data/ade/ so that data/ade/ADEChallengeData2016/{images,annotations} exist (README, "Real '
                      'data"); or set the dataloaders\' dataset.data_root to your copy.'),
}
SYNTHETIC_HINT = 'To see everything work without downloads, run `make demo` (synthetic COCO/ADE-format data).'


def dataset_hint(dataloader_cfg: Dict) -> str:
    dataset_type = str(dataloader_cfg.get('dataset', {}).get('type', '')).split('.')[-1]
    how_to = DATASET_HINTS.get(dataset_type, f'Check the dataset paths of your {dataset_type or "dataset"} config.')
    return f'{how_to} {SYNTHETIC_HINT}'


@RUNNERS.register_module()
class DaViTRunner(Runner):

    @staticmethod
    def build_dataloader(dataloader: Union[DataLoader, Dict], seed: Optional[int] = None,
                         diff_rank_seed: bool = False) -> DataLoader:
        try:
            return Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        except FileNotFoundError as error:
            if isinstance(dataloader, DataLoader):
                raise
            raise FileNotFoundError(f'Dataset not found: {error}. {dataset_hint(dataloader)}') from error
