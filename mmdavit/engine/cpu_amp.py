"""Mixed precision without a GPU: ``--amp`` (``AmpOptimWrapper``) as bfloat16 autocast on the CPU."""
from contextlib import contextmanager
from typing import Iterator, Union

import torch
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.utils import apply_to

from mmdavit.compat import disabled_grad_scaler, require_torch

AMP_TYPES = ('AmpOptimWrapper', 'mmengine.AmpOptimWrapper', AmpOptimWrapper)


class CPUAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` for hosts without an accelerator: bfloat16 autocast on the CPU.

    The autocast region is the model's ``extract_feat`` (backbone and neck of mmdet detectors, mmseg
    segmentors and mmpretrain classifiers; the whole forward for a model without one), and the features
    leave it in float32: the heads run in float32 because mmcv's CPU kernels (nms, RoIAlign) have no
    bfloat16 version. bfloat16 keeps float32's exponent range, so there is no loss scaling (a disabled
    scaler keeps AmpOptimWrapper's backward / step / state-dict code; a GPU checkpoint's scaler state is
    ignored on load).
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic', dtype: Union[str, torch.dtype, None] = None,
                 use_fsdp: bool = False, **kwargs):
        # torch 2.1's bfloat16 backward through DaViT aborts the process ("double free or corruption", seen on a
        # Xeon with AMX); torch 2.4 made CPU autocast first-class (and 2.14.1 is tested)
        require_torch('2.4', 'Mixed precision on the CPU (--amp / AmpOptimWrapper without a GPU)')
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, dtype)
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f'Mixed precision on the CPU supports bfloat16 only, got optim_wrapper.dtype={dtype}; '
                             'set dtype="bfloat16" (float16 needs a GPU)')
        if use_fsdp:
            raise ValueError('AmpOptimWrapper(use_fsdp=True) needs GPUs')
        OptimWrapper.__init__(self, **kwargs)  # AmpOptimWrapper.__init__ asserts a GPU
        self._scale_update_param = None
        self.loss_scaler = disabled_grad_scaler()
        self.cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with OptimWrapper.optim_context(self, model), bfloat16_features(model):
            yield


@contextmanager
def bfloat16_features(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model.extract_feat`` under CPU bfloat16 autocast, returning float32 features."""
    target = model.module if is_model_wrapper(model) else model
    if not hasattr(target, 'extract_feat'):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            yield
        return
    extract_feat = target.extract_feat

    def autocast_extract_feat(*args, **kwargs):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            features = extract_feat(*args, **kwargs)
        return apply_to(features, lambda x: isinstance(x, torch.Tensor) and x.is_floating_point(),
                        lambda x: x.float())

    target.extract_feat = autocast_extract_feat  # an instance attribute shadows the method for this step
    try:
        yield
    finally:
        del target.extract_feat
