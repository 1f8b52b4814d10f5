"""Torch versions: the supported range, feature floors, and loading torch files without running their code.

mmdavit supports torch 2.1 (what OpenMMLab's prebuilt mmcv 2.1.0 wheels are built for) through 2.14.

Loading: torch >= 2.6 defaults ``torch.load(weights_only=True)``; mmengine 0.10.x calls ``torch.load`` without
``weights_only``, so on new torch its own checkpoints (resume, ``load_from``, ``--checkpoint``) would fail, and
on torch < 2.6 any file it loads may run code. mmdavit reads every torch file through :func:`load_torch_file`:
a weights-only load that also accepts exactly the types mmengine stores. torch >= 2.4 has an allow-list
(``add_safe_globals``); on older torch a restricted unpickler with the same list does the job.
"""
import argparse
import codecs
import collections
import importlib
import pickle
import types
from typing import Any, BinaryIO, Dict, Optional, Tuple, Union

import numpy as np
import torch

MIN_TORCH = (2, 1)


def torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split('.')[:2]
    return int(major), int(''.join(c for c in minor if c.isdigit()) or 0)


def torch_at_least(version: str) -> bool:
    return torch_version() >= tuple(int(part) for part in version.split('.')[:2])


def require_torch(version: str, feature: str) -> None:
    """Stop with one line naming ``feature`` and the torch it needs, where this torch is older."""
    if not torch_at_least(version):
        raise RuntimeError(f'{feature} needs torch >= {version}; this is torch {torch.__version__}. '
                           'Everything else in mmdavit works from torch 2.1 (README, "Supported versions")')


def check_supported_torch() -> None:
    if torch_version() < MIN_TORCH:
        floor = '.'.join(map(str, MIN_TORCH))
        raise ImportError(f'mmdavit needs torch >= {floor} (torch {torch.__version__} is installed): install torch '
                          f'{floor} or newer, then mmcv 2.1.0 built for it (README, "Supported versions")')


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, which takes a device type from torch 2.4 on."""
    if torch_at_least('2.4'):
        return torch.is_autocast_enabled(device_type)
    return torch.is_autocast_cpu_enabled() if device_type == 'cpu' else torch.is_autocast_enabled()


def disabled_grad_scaler():
    """A GradScaler that does nothing (CPU bfloat16 needs no loss scaling): ``torch.amp.GradScaler('cpu')``
    exists from torch 2.3; before, the CUDA class works on the CPU when disabled."""
    if torch_at_least('2.3'):
        return torch.amp.GradScaler('cpu', enabled=False)
    return torch.cuda.amp.GradScaler(enabled=False)


def check_cpu_fsdp() -> None:
    """torch's FSDP on CPU ranks makes CPU streams with a priority, which ``torch.cpu.Stream`` takes only in
    newer torch (2.1.2 fails inside FSDP's first forward with "Stream() takes no arguments"); say so up front."""
    try:
        torch.cpu.Stream(priority=0)
    except TypeError:
        raise RuntimeError(f'Sharded training (FSDP) on CPU ranks needs a newer torch than {torch.__version__}: torch '
                           "2.1's FSDP cannot run on the CPU (its CPU streams take no priority). Tested: torch 2.14.1 "
                           'works. Train on CPU ranks with DDP (plain DaViTRunner), or upgrade torch') from None


# ---------------------------------------------------------------------------------------------------------
# Loading torch files without running code
# ---------------------------------------------------------------------------------------------------------

def _numpy_types() -> list:
    """numpy's array / scalar reconstruction helpers and every dtype class, as pickled in mmengine's message
    hub and meta (numbers of any numpy type; none of these run code)."""
    # numpy 2 moved numpy.core to numpy._core; numpy 1.26 has a numpy._core whose attributes are not loaded yet
    multiarray = importlib.import_module('numpy._core.multiarray' if int(np.__version__.split('.')[0]) >= 2
                                         else 'numpy.core.multiarray')
    dtypes = {type(np.dtype(t)) for t in set(np.sctypeDict.values())}
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def _history_buffer_state(self) -> dict:
    # mmengine pickles HistoryBuffer's statistics functions (as getattr(HistoryBuffer, 'min')), which
    # weights_only loads reject; allow-listing getattr would make them unsafe again. The functions are
    # class-level and __setstate__ re-registers the defaults, so leaving them out loses nothing.
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def _mmengine_types() -> list:
    from mmengine.logging import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_state
    return [HistoryBuffer, argparse.Namespace, collections.OrderedDict, *_numpy_types()]


def _names(obj: Any) -> set:
    """The names a pickle may use for ``obj``: where it lives, and numpy's 1.x / 2.x module names."""
    names = {f'{obj.__module__}.{obj.__qualname__}'}
    for old, new in (('numpy.core.', 'numpy._core.'), ('numpy._core.', 'numpy.core.')):
        names |= {name.replace(old, new) for name in names if name.startswith(old)}
    return names


class RefusedCheckpoint(ValueError):
    """A torch file whose pickle would import or call something outside the allow-list."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        super().__init__(
            f'Refused to read {path}: its pickle would import or call code ({name}), and mmdavit reads torch files '
            'without running code from them (weights-only loading). Prefer the .safetensors version of these '
            'weights; if you trust this file, re-save its tensors alone (torch.save(state_dict)) first')


class ForbiddenGlobal(pickle.UnpicklingError):

    def __init__(self, name: str):
        self.name = name
        super().__init__(f'{name} is not an allowed global')


def _allowed_globals() -> Dict[str, Any]:
    """torch's own weights-only list (tensors, storages, dtypes, layouts...) plus mmengine's types."""
    from torch import _weights_only_unpickler
    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    # torch 2.1's list has ten dtypes; a checkpoint's meta may name any (bfloat16, bool, uint8...)
    allowed.update({str(t): t for t in vars(torch).values() if isinstance(t, torch.dtype)})
    # numpy 1.x arrays pickled at torch.save's protocol 2 store their bytes as _codecs.encode(text, 'latin1')
    # (torch >= 2.4 allows it too)
    allowed['_codecs.encode'] = codecs.encode
    for obj in _mmengine_types():
        allowed.update(dict.fromkeys(_names(obj), obj))
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed names: a pickle that names anything else (``os.system``, a model class...)
    stops before it is imported, so nothing from the file runs. (torch's loader resolves storages itself.)"""
    allowed: Dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = self.allowed.get(f'{module}.{name}')
        if found is None:
            raise ForbiddenGlobal(f'{module}.{name}')
        return found


# torch.load takes a pickle module: anything with ``Unpickler`` and ``load``.
restricted_pickle = types.SimpleNamespace(__name__='mmdavit_restricted_pickle', Unpickler=_RestrictedUnpickler,
                                          load=lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load())

_HAS_ALLOW_LIST = hasattr(torch.serialization, 'add_safe_globals')  # torch >= 2.4


def allow_mmengine_checkpoint_types() -> None:
    """Called once when mmdavit is imported."""
    if _HAS_ALLOW_LIST:
        torch.serialization.add_safe_globals(_mmengine_types())
    else:
        _RestrictedUnpickler.allowed = _allowed_globals()


def _restricted_load(file: Union[str, BinaryIO], map_location, mmap: bool) -> Any:
    if not _RestrictedUnpickler.allowed:
        _RestrictedUnpickler.allowed = _allowed_globals()
    extra = {'mmap': True} if mmap else {}
    return torch.load(file, map_location=map_location, pickle_module=restricted_pickle, weights_only=False, **extra)


def forbidden_global(file: Union[str, BinaryIO]) -> Optional[str]:
    """The first name outside the allow-list that the file's pickle would import, or None (also for files
    that are not torch pickles at all)."""
    if not isinstance(file, str):
        file.seek(0)
    try:
        _restricted_load(file, 'cpu', mmap=False)
    except ForbiddenGlobal as error:
        return error.name
    except Exception:  # noqa: BLE001  (a truncated or foreign file: not ours to judge here)
        return None
    return None


def load_torch_file(file: Union[str, BinaryIO], map_location=None, mmap: bool = False) -> Any:
    """``torch.load`` that never runs code from the file, on every supported torch: a weights-only load that
    takes mmengine's own types too. A pickle that names anything else raises :class:`RefusedCheckpoint`
    (the same message whatever torch's own wording is); other errors are torch's."""
    path = file if isinstance(file, str) else getattr(file, 'name', '<file object>')
    try:
        if not _HAS_ALLOW_LIST:
            return _restricted_load(file, map_location, mmap)
        extra = {'mmap': True} if mmap else {}
        return torch.load(file, map_location=map_location, weights_only=True, **extra)
    except ForbiddenGlobal as error:
        raise RefusedCheckpoint(path, error.name) from None
    except pickle.UnpicklingError as error:  # torch's weights-only refusal, worded differently per version
        name = forbidden_global(file)
        if name:
            raise RefusedCheckpoint(path, name) from None
        raise error
