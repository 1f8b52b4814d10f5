"""What a user of mmpretrain-trained DaViT weights gets from mmdavit (docs/checkpoint-formats.md, "mmpretrain
weights"): every tensor loads, blocks compute the same, but mmpretrain's stem pads the image differently from
the official model (``padding='same'``: 1 pixel left/top and 2 right/bottom at 224x224, where the official stem,
and ours, pad 3 on every side), so the features differ; they agree once mmpretrain's stem pads as the official.
"""
import torch
from mmpretrain.models.backbones import DaViT as MMPretrainDaViT

from mmdavit.models import DaViT
from mmdavit.models.checkpoints import load_pretrained
from tests.models.reference import perturb_


def max_abs_per_stage(ours: DaViT, theirs: MMPretrainDaViT, images: torch.Tensor) -> list:
    with torch.no_grad():
        return [(a - b).abs().max().item() for a, b in zip(ours(images), theirs(images))]


def test_mmpretrain_weights_give_other_features_until_its_stem_pads_as_the_official(tmp_path):
    torch.manual_seed(0)
    theirs = perturb_(MMPretrainDaViT(arch='t', out_indices=(0, 1, 2, 3)))
    theirs.eval()
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in theirs.state_dict().items()}}, tmp_path / 'mmpt.pth')
    ours = DaViT(arch='tiny', drop_path_rate=0.0).eval()
    report = load_pretrained(ours, str(tmp_path / 'mmpt.pth'))
    assert report.format == 'mmpretrain' and report.missing == [] and report.unexpected == []
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    as_trained = max_abs_per_stage(ours, theirs, images)
    # mmpretrain's stem as the official model's: no adaptive "same" padding, 3 pixels on every side.
    assert theirs.patch_embed.adaptive_padding is not None and theirs.patch_embed.projection.padding == (0, 0)
    theirs.patch_embed.adaptive_padding = None
    theirs.patch_embed.projection.padding = (3, 3)
    symmetric = max_abs_per_stage(ours, theirs, images)
    print(f'max abs difference per stage at 224x224: mmpretrain as it is {as_trained}, '
          f'with the official stem padding {symmetric}')
    assert max(symmetric) < 1e-4
    assert min(as_trained) > 0.1 and min(as_trained) > 1000 * max(symmetric)
