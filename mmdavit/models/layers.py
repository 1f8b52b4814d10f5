"""The DaViT blocks, in data-flow order, with the variants an arch spec chooses between: the downsample
(classic 2x2 patches or Florence-2's overlapping 3x3) and the channel attention (classic or Florence-2's v2).

Tokens travel between modules as ``(B, H, W, C)`` tensors: LayerNorm and Linear act on the last dim without
copies, and ``x.permute(0, 3, 1, 2)`` is a channels-last NCHW view that the depthwise and patch convolutions
take without a layout copy.
"""
from typing import Callable, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from mmdavit.models.fast_paths import FlushNegligible, add_in_bands, may_update_in_place


def pad_right_bottom(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a ``(B, H, W, C)`` tensor at the right and bottom up to multiples of ``multiple``,
    as the released weights were trained with (not symmetric "same" padding)."""
    pad_h = -x.shape[1] % multiple
    pad_w = -x.shape[2] % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def conv_tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW convolution to ``(B, H, W, C)`` tokens, returning ``(B, H', W', C')``."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class DropPath(nn.Module):
    """Stochastic depth per sample: residual branches are dropped whole during training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def sample_scale(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample factor (0 or 1 / keep) broadcastable to ``x``, or None when nothing is dropped."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep = 1.0 - self.drop_prob
        return x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


class Stem(nn.Module):
    """Stage-0 patch embedding: 7x7 stride-4 conv on the right/bottom padded image, then LayerNorm."""

    def __init__(self, in_channels: int, embed_dims: int):
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, embed_dims, kernel_size=7, stride=4, padding=3)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = -images.shape[2] % 4, -images.shape[3] % 4
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        return self.norm(self.conv(images).permute(0, 2, 3, 1))


class PatchDownsample(nn.Module):
    """Between stages (classic DaViT): LayerNorm, right/bottom pad to even size, 2x2 stride-2 conv."""

    def __init__(self, in_dims: int, out_dims: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dims)
        self.conv = nn.Conv2d(in_dims, out_dims, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_tokens(self.conv, pad_right_bottom(self.norm(x), 2))


class OverlapDownsample(nn.Module):
    """Between stages (Florence-2): LayerNorm, then a 3x3 stride-2 conv with padding 1, whose windows overlap.
    Same names and output size (ceil(H / 2) x ceil(W / 2)) as ``PatchDownsample``; only the kernel differs."""

    def __init__(self, in_dims: int, out_dims: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dims)
        self.conv = nn.Conv2d(in_dims, out_dims, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_tokens(self.conv, self.norm(x))


class ConvPosEnc(nn.Module):
    """Conditional position encoding: ``x + dwconv3x3(x)``."""

    def __init__(self, dims: int):
        super().__init__()
        self.proj = nn.Conv2d(dims, dims, kernel_size=3, padding=1, groups=dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_tokens(self.proj, x)
        if not may_update_in_place() or out.dtype != x.dtype:
            return x + out
        return out.add_(x)  # no autograd: add into the conv output rather than allocate the sum


class Mlp(nn.Module):

    def __init__(self, dims: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dims * mlp_ratio)
        self.fc1 = nn.Linear(dims, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        if not may_update_in_place():
            return self.fc2(self.act(hidden))
        return self.fc2(torch.ops.aten.gelu_(hidden))  # no autograd: GELU in place, one 4C buffer fewer


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows (no shift, no position bias).

    The input is zero-padded right/bottom to window multiples and attended *without a mask*: the padded
    tokens act as keys whose q/k/v are the qkv bias, exactly as in the official code.
    """

    def __init__(self, dims: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dims, dims * 3)
        self.proj = nn.Linear(dims, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dims = x.shape
        ws = self.window_size
        x = pad_right_bottom(x, ws)
        rows, cols = x.shape[1] // ws, x.shape[2] // ws
        windows = x.view(batch, rows, ws, cols, ws, dims).transpose(2, 3).reshape(-1, ws * ws, dims)
        # Strided (windows, heads, tokens, head_dims) views of the qkv output. Unbinding the "3" dim in place
        # lets autograd stack the three gradients straight into qkv's layout, with no further copy.
        q, k, v = self.qkv(windows).view(-1, ws * ws, 3, self.num_heads, dims // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = self.proj(out.transpose(1, 2).reshape(-1, ws * ws, dims))
        out = out.view(batch, rows, cols, ws, ws, dims).transpose(2, 3).reshape(batch, rows * ws, cols * ws, dims)
        return out[:, :height, :width]


class ChannelGroupAttention(nn.Module):
    """What both channel attentions share: one ``qkv`` Linear whose output is viewed as q, k, v of ``num_groups``
    channel groups, and the output ``proj``. A subclass's ``mix_channels`` says how q, k and v mix channels."""

    def __init__(self, dims: int, num_groups: int):
        super().__init__()
        self.num_groups = num_groups
        self.qkv = nn.Linear(dims, dims * 3)
        self.proj = nn.Linear(dims, dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dims = x.shape
        # Views of the qkv output, no copies; autograd's unbind backward stacks straight into qkv's layout.
        q, k, v = self.qkv(x).view(batch, height * width, 3, self.num_groups, dims // self.num_groups).unbind(2)
        out = self.mix_channels(q, k, v, height * width)  # (B, G, C_g, N)
        return self.proj(out.permute(0, 3, 1, 2).reshape(batch, height, width, dims))

    def mix_channels(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens) -> torch.Tensor:
        """``(B, N, G, C_g)`` q, k, v of ``tokens`` = N tokens -> ``(B, G, C_g, N)``."""
        raise NotImplementedError


class ChannelAttention(ChannelGroupAttention):
    """Channel group attention (classic DaViT): per group, keys and values build a ``C_g x C_g`` map,
    ``softmax((k * C_g^-1/2)^T v)``, that mixes the queries' channels. The role order (k, v build the map;
    q is transformed) is the official one."""

    def __init__(self, dims: int, num_groups: int):
        super().__init__(dims, num_groups)
        self.scale = (dims // num_groups)**-0.5

    def mix_channels(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens) -> torch.Tensor:
        # Scaling k before the matmul, on these layouts, reproduces the reference's rounding bit for bit:
        # the logits sum over all tokens and the softmax would amplify any change.
        logits = FlushNegligible.apply((k * self.scale).permute(0, 2, 3, 1) @ v.transpose(1, 2))
        attn = FlushNegligible.apply(logits.softmax(dim=-1))  # (B, G, C_g, C_g)
        return attn @ q.permute(0, 2, 3, 1)


class ChannelAttentionV2(ChannelGroupAttention):
    """Channel group attention v2 (Florence-2): per group, queries and keys build the map
    ``A = softmax((q * N^-1/2)^T k)``, N the token count of the stage map, and the output is ``v A^T``.
    Same ``qkv`` / ``proj`` parameters as ``ChannelAttention``; the roles of q, k, v and the scale differ."""

    def mix_channels(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens) -> torch.Tensor:
        # The scale is a Python float in eager mode, as in the reference. While tracing (jit.trace, ONNX) height
        # and width, hence ``tokens``, are 0-dim tensors: the scale is recorded as ops on the input's shape, so N
        # stays dynamic.
        logits = FlushNegligible.apply((q * tokens**-0.5).permute(0, 2, 3, 1) @ k.transpose(1, 2))
        attn = FlushNegligible.apply(logits.softmax(dim=-1))  # (B, G, C_g, C_g)
        return attn @ v.permute(0, 2, 3, 1)


class DualBlock(nn.Module):
    """One half of a DaViT layer: ``x + cpe1``; attention residual; ``x + cpe2``; MLP residual.

    On one CPU thread the MLP residual, and the residual of window attention (windows never straddle a band
    of whole window rows), are computed band by band (``add_in_bands``). Channel attention, of either
    variant, mixes all tokens: its residual is never banded.
    """

    def __init__(self, attn: nn.Module, dims: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.cpe1 = ConvPosEnc(dims)
        self.norm1 = nn.LayerNorm(dims)
        self.attn = attn
        self.cpe2 = ConvPosEnc(dims)
        self.norm2 = nn.LayerNorm(dims)
        self.mlp = Mlp(dims, mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The cpe outputs are new tensors of this block, which add_in_bands may then update in place.
        x = self.cpe1(x)
        band_multiple = self.attn.window_size if isinstance(self.attn, WindowAttention) else None
        x = self._residual(x, lambda t: self.attn(self.norm1(t)), band_multiple)
        x = self.cpe2(x)
        return self._residual(x, lambda t: self.mlp(self.norm2(t)), 1)

    def _residual(self, x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                  band_multiple: Optional[int]) -> torch.Tensor:
        """``x + drop_path(branch(x))`` through ``add_in_bands``."""
        scale = self.drop_path.sample_scale(x)  # drawn once: every band drops the same samples
        if scale is not None:
            branch = (lambda t, f=branch: f(t) * scale)
        return add_in_bands(x, branch, band_multiple)


class DaViTLayer(nn.Module):
    """A spatial (window) block followed by a channel block."""

    def __init__(self, dims: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: Tuple[float, float], channel_attention: Type[nn.Module] = ChannelAttention):
        super().__init__()
        self.spatial = DualBlock(WindowAttention(dims, num_heads, window_size), dims, mlp_ratio, drop_path[0])
        self.channel = DualBlock(channel_attention(dims, num_heads), dims, mlp_ratio, drop_path[1])

    def forward(self, x: torch.Tensor, with_cp: bool = False) -> torch.Tensor:
        for block in (self.spatial, self.channel):
            if with_cp and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class DaViTStage(nn.Module):
    """An optional downsample (``downsample``: its class, or None for stage 0), then ``depth`` layers."""

    def __init__(self, in_dims: int, dims: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop_path: Sequence[float], downsample: Optional[Type[nn.Module]],
                 channel_attention: Type[nn.Module] = ChannelAttention):
        super().__init__()
        self.downsample = downsample(in_dims, dims) if downsample is not None else None
        self.blocks = nn.ModuleList(
            DaViTLayer(dims, num_heads, window_size, mlp_ratio, (drop_path[2 * j], drop_path[2 * j + 1]),
                       channel_attention) for j in range(depth))

    def forward(self, x: torch.Tensor, with_cp: bool = False) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for layer in self.blocks:
            x = layer(x, with_cp)
        return x
