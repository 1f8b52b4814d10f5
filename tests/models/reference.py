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
