"""CPU fast paths of the DaViT blocks, and the guards that turn them off where they would not hold.

Each helper computes the same numbers as the plain expression it replaces (tests/models/test_equivalence.py
and tests/models/test_florence2.py compare against timm with bands, in-place updates and the flush active).
Graph recorders (``torch.jit.trace``, the ONNX exporter) always get the plain computation.
"""
from typing import Callable, Optional

import torch


def recording_graph() -> bool:
    """True while ``torch.jit.trace`` or the ONNX exporter records the forward. The CPU fast paths below
    (in-place updates, per-sample and per-band loops) would be recorded as a fixed, mutating graph, so those
    recorders get the plain computation, which gives the same numbers."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def may_update_in_place() -> bool:
    """Without autograd (and outside a graph recorder) a module may write into its own temporaries."""
    return not torch.is_grad_enabled() and not recording_graph()


def tokens_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` tokens -> contiguous ``(B, C, H, W)``, copied sample by sample as 2-D transposes:
    PyTorch's CPU copy has a blocked kernel for those, 3x faster than its generic 4-D permute copy."""
    if x.device.type != 'cpu' or recording_graph():
        return x.permute(0, 3, 1, 2).contiguous()
    batch, height, width, dims = x.shape
    out = x.new_empty(batch, dims, height, width)
    for i in range(batch):
        out[i].view(dims, height * width).copy_(x[i].reshape(height * width, dims).t())
    return out


class FlushNegligible(torch.autograd.Function):
    """Identity, except that entries below 2^-64 of the tensor's largest magnitude become exact zeros, in
    the value and in its gradient. Such entries move no sum they enter (fp32 resolves 2^-24; outputs stay
    bitwise the same), but they breed subnormal numbers, on which x86 GEMMs run up to 10x slower.

    Channel attention (both variants) needs it: its logits sum over all tokens, so at 800x1344 80-96% of the
    softmax entries of strides 4-16 (and of the logits' gradient) are that small, some subnormal. Flushing
    them made forward+backward 1.35x faster there on one CPU core.
    """

    @classmethod
    def apply(cls, x: torch.Tensor) -> torch.Tensor:
        return x if recording_graph() else super().apply(x)  # exported graphs: identity, same outputs

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _zero_negligible(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _zero_negligible(grad)


def _zero_negligible(x: torch.Tensor) -> torch.Tensor:
    magnitude = x.abs()
    return x.masked_fill(magnitude < magnitude.amax() * 2.0**-64, 0.0)


# Bands of about this many tokens keep a branch's wide intermediates (4C MLP hidden, 3C qkv) in cache.
BAND_TOKENS = 2048


def add_in_bands(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor],
                 multiple: Optional[int] = 1) -> torch.Tensor:
    """``x + branch(x)``. A ``branch`` that treats bands of ``multiple`` rows independently (a per-token MLP:
    1; window attention: the window size; None for one that mixes all rows, as channel attention does) is
    computed one band of about ``BAND_TOKENS`` tokens at a time, bitwise the same as all rows at once.

    Bands only on one CPU thread: there the 4C-wide MLP hidden activations (3C qkv) of a band stay in cache
    between fc1, GELU and fc2 instead of being allocated, page-faulted and streamed at full size (alone, the
    stage-0 MLP residual at 800x1344 takes 100 ms instead of 220 ms; the backbone's forward+backward 7%
    less). With more threads every op of every band is a thread synchronisation: on a busy 2-core machine
    that made the forward up to 2x slower. GPUs would only see more kernel launches.

    Without autograd the sums are written into ``x``, which must therefore be a temporary of the caller.
    """
    batch, height, width, _ = x.shape
    rows = height if multiple is None else -(-BAND_TOKENS // (batch * width * multiple)) * multiple
    in_place = may_update_in_place()
    if rows >= height or x.device.type != 'cpu' or torch.get_num_threads() > 1 or recording_graph():
        return x.add_(branch(x)) if in_place else x + branch(x)
    bands = x.split(rows, dim=1)
    if not in_place:
        return torch.cat([band + branch(band) for band in bands], dim=1)
    for band in bands:
        band += branch(band)
    return x
