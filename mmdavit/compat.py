"""Make mmengine 0.10.x work on torch >= 2.6, which defaults ``torch.load(weights_only=True)``.

mmengine calls ``torch.load`` without ``weights_only``, so resume, ``load_from`` and ``mim test
--checkpoint`` fail on the non-tensor objects mmengine itself saves. We allow-list exactly those types
(no blanket unsafe load) when mmdavit is imported.
"""
import argparse
import collections

import numpy as np
import torch


def _numpy_types() -> list:
    """numpy's array/scalar reconstruction helpers, as pickled by mmengine's message hub and meta."""
    core = getattr(np, '_core', None) or np.core
    types = [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype]
    types += [type(np.dtype(name)) for name in ('float16', 'float32', 'float64', 'int32', 'int64', 'uint8',
                                                 'bool')]
    return types


def _history_buffer_state(self) -> dict:
    # mmengine pickles HistoryBuffer's statistics functions (as getattr(HistoryBuffer, 'min')), which
    # weights_only loads reject; allow-listing getattr would make them unsafe again. The functions are
    # class-level and __setstate__ re-registers the defaults, so leaving them out loses nothing.
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def allow_mmengine_checkpoint_types() -> None:
    from mmengine.logging import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_state
    torch.serialization.add_safe_globals([HistoryBuffer, argparse.Namespace, collections.OrderedDict,
                                          *_numpy_types()])
