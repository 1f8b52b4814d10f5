"""Training machinery.

* ``layer_decay.py``, ``hooks.py``: the layer-wise LR decay constructor and the hook that checks and logs it
  (registered in mmdavit's registries only: configs name them ``mmdavit.<Name>``, which resolves from any
  default scope).
* ``runner.py``: ``DaViTRunner`` (configs' ``runner_type``), built from ``checkpointing.py`` (atomic
  checkpoints, clear loading errors), ``loops.py`` (exact resume) and ``cpu_amp.py`` (``--amp`` on the CPU).
* ``strategies.py``: sharded training (FSDP) through ``FlexibleRunner``: ``DaViTFSDPStrategy`` and
  ``DaViTFlexibleRunner`` (configs' ``strategy`` / ``runner_type``), with the same guarantees.
"""
from .checkpointing import AtomicCheckpointHook
from .cpu_amp import CPUAmpOptimWrapper
from .hooks import LayerDecayLRHook
from .layer_decay import DaViTLayerDecayOptimWrapperConstructor
from .loops import ResumableEpochBasedTrainLoop, ResumableIterBasedTrainLoop
from .runner import DaViTRunner
from .strategies import DaViTFlexibleRunner, DaViTFSDPStrategy

__all__ = ['AtomicCheckpointHook', 'CPUAmpOptimWrapper', 'DaViTFlexibleRunner', 'DaViTFSDPStrategy',
           'DaViTLayerDecayOptimWrapperConstructor', 'DaViTRunner',
           'LayerDecayLRHook', 'ResumableEpochBasedTrainLoop', 'ResumableIterBasedTrainLoop']
