"""Reference models for the equivalence tests: timm's DaViT (faithful to the official weights) with
perturbed random weights, and its state dict rewritten under the documented official key names."""
import re

import torch

SMALL_SB = dict(embed_dims=128, depths=(1, 1, 2, 1), num_heads=(4, 8, 16, 32))  # S/B-shaped, reduced depth


def perturb_(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere (norms and biases too), so no zero/one init hides a wiring bug."""
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if 'norm' in name and name.endswith('weight'):
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(0.05 * noise)
    return model


def timm_davit(embed_dims=96, depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24), window_size=7):
    from timm.models.davit import DaVit
    model = DaVit(embed_dims=tuple(embed_dims * 2**i for i in range(len(depths))), depths=depths,
                  num_heads=num_heads, window_size=window_size)
    return perturb_(model).eval()


def timm_to_official(state_dict: dict) -> dict:
    """timm -> official classification names (the inverse of timm's documented mapping)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace('stem.conv.', 'patch_embeds.0.proj.').replace('stem.norm.', 'patch_embeds.0.norm.')
        key = re.sub(r'^stages\.(\d+)\.downsample\.conv\.', r'patch_embeds.\1.proj.', key)
        key = re.sub(r'^stages\.(\d+)\.downsample\.norm\.', r'patch_embeds.\1.norm.', key)
        key = re.sub(r'^stages\.(\d+)\.blocks\.', r'main_blocks.\1.', key)
        key = key.replace('.cpe1.', '.cpe.0.').replace('.cpe2.', '.cpe.1.')
        key = key.replace('head.norm.', 'norms.').replace('head.fc.', 'head.')
        out[key] = value
    return out


# Florence-2 towers. timm names their blocks (``stages.{s}.blocks.{j}.spatial_block`` / ``channel_block``);
# everything else has our names already.
HUGE_FL_REDUCED = dict(depths=(1, 1, 2, 1))  # davit_huge_fl's widths and heads, stage 2 cut from 9 layers to 2


def timm_davit_fl(name: str = 'davit_base_fl', **kwargs):
    """timm's Florence-2 tower ``davit_base_fl`` / ``davit_huge_fl`` (kwargs override its arch, e.g. depths),
    with perturbed random weights."""
    import timm
    model = timm.create_model(name, pretrained=False, drop_path_rate=0.0, **kwargs)
    return perturb_(model).eval()


def timm_fl_to_mmdavit(state_dict: dict) -> dict:
    """timm ``davit_*_fl`` backbone keys -> ours, from the documented names (the classifier head dropped)."""
    return {key.replace('.spatial_block.', '.spatial.').replace('.channel_block.', '.channel.'): value
            for key, value in state_dict.items() if not key.startswith('head.')}
