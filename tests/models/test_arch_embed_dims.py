"""An arch dict's ``embed_dims``: the first stage's width (DaViT doubles it at each stage); a per-stage tuple
(timm's habit) is taken when it doubles that way, and refused with the two accepted forms otherwise."""
import pytest
import torch

from mmdavit.models import DaViT

ARCH = dict(depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=3)


@pytest.mark.parametrize('embed_dims', [(16, 32, 64, 128), [16, 32, 64, 128]])
def test_per_stage_widths_that_double_build_the_same_model(embed_dims):
    torch.manual_seed(0)
    reference = DaViT(arch=dict(ARCH, embed_dims=16), drop_path_rate=0.0).eval()
    torch.manual_seed(0)
    model = DaViT(arch=dict(ARCH, embed_dims=embed_dims), drop_path_rate=0.0).eval()
    assert model.embed_dims == [16, 32, 64, 128] and model.arch['embed_dims'] == 16
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    images = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        for ours, expected in zip(model(images), reference(images)):
            assert torch.equal(ours, expected)


@pytest.mark.parametrize('embed_dims,message', [
    ((96, 192, 384, 384), "DaViT arch embed_dims=(96, 192, 384, 384): DaViT doubles the width at every stage, so "
                          "give the first stage's width, embed_dims=96, or 4 widths doubling that way, "
                          "(96, 192, 384, 768)"),
    ((96, 192, 384), "DaViT arch embed_dims=(96, 192, 384): DaViT doubles the width at every stage, so give the "
                     "first stage's width, embed_dims=96, or 4 widths doubling that way, (96, 192, 384, 768)"),
    ('96', "DaViT arch embed_dims must be a positive int, the first stage's width (each later stage doubles it, "
           "e.g. 96 for DaViT-T: 96, 192, 384, 768), got '96'"),
    (0, "DaViT arch embed_dims must be a positive int"),
    (96.0, "DaViT arch embed_dims must be a positive int"),
])
def test_other_widths_are_refused_with_the_accepted_forms(embed_dims, message):
    with pytest.raises(ValueError) as info:
        DaViT(arch=dict(depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24), embed_dims=embed_dims))
    assert str(info.value).startswith(message)
