"""mmdavit's engine copies or depends on the exact bodies of some of mmengine's methods (private ones among
them). Each is pinned here by a hash of its source as in mmengine 0.10.7: a new mmengine that changes one
fails loudly, instead of our copy drifting silently from what mmengine does."""
import hashlib
import inspect

import mmengine
import pytest
from mmengine._strategy import FSDPStrategy
from mmengine.hooks import CheckpointHook
from mmengine.runner import EpochBasedTrainLoop, FlexibleRunner, IterBasedTrainLoop, Runner

# upstream method -> (sha256 of its source in mmengine 0.10.7, what in mmdavit follows it)
PINNED = {
    'CheckpointHook._save_checkpoint_with_step': (
        CheckpointHook._save_checkpoint_with_step,
        'cdbc1b54c7c88d9525ab025a9d51a3d3be6e6e36396c0f1151ecf51281fd3482',
        'AtomicCheckpointHook._save_checkpoint_with_step (mmdavit/engine/checkpointing.py) is a reordered copy'),
    'EpochBasedTrainLoop.run': (
        EpochBasedTrainLoop.run,
        '51ae20508b4d459fb39f6d8fb1f2bd07ca6ed4b201926abf10cb991f1e4f1da8',
        'ResumableEpochBasedTrainLoop.run (mmdavit/engine/loops.py) is a copy with validate() for val_loop.run()'),
    'EpochBasedTrainLoop.run_epoch': (
        EpochBasedTrainLoop.run_epoch,
        '5a9b993c3e9727d48a734e1a627a30a0fa00151cf12626e58f9da757f354b3d9',
        'ResumableEpochBasedTrainLoop.run_epoch (mmdavit/engine/loops.py) is a copy that skips trained batches'),
    'IterBasedTrainLoop.run': (
        IterBasedTrainLoop.run,
        'f5de0b5cf6e25e3b58a9dc5ce8cba8a633536dd15f52f1b446c52b438776413b',
        'ResumableIterBasedTrainLoop.run (mmdavit/engine/loops.py) is a copy with random-state restore'),
    'Runner.load_checkpoint': (
        Runner.load_checkpoint,
        'bebf88cd7097d2f19f293e48cfb820f79265087402d4ab1d8f61c980157aa9c7',
        'DaViTRunner.load_checkpoint (mmdavit/engine/runner.py) is a copy with checks added'),
    'Runner.resume': (
        Runner.resume,
        '30cc2d3b4e1afabdf5ef783f18475840b34832a0b0ae591612bb0a7bd437deaa',
        'DaViTRunner.resume / load_checkpoint check the model and optimizer settings inside load_checkpoint, '
        'which mmengine must call before it loads the optimizer state'),
    'Runner.load_or_resume': (
        Runner.load_or_resume,
        '9c653d074f9216315d8fe9fb6db0e24e7bbcd386b4f5dfb9d8932be55bb6e68b',
        "DaViTRunner.resume tells resume=True alone (path from last_checkpoint) from --resume PATH by this "
        'method\'s rule'),
    'FSDPStrategy.load_optim_state_dict': (
        FSDPStrategy.load_optim_state_dict,
        'cd4df4cbc6655fa1f77e6c298437a30d5a42732b7419d9da06e68548c02d27db',
        'DaViTFSDPStrategy.load_optim_state_dict (mmdavit/engine/strategies.py) replaces it: mmengine calls '
        'FSDP.optim_state_dict_to_load with torch < 2.1\'s argument order'),
    'FSDPStrategy._wrap_model': (
        FSDPStrategy._wrap_model,
        '104d1f5584d33d99ecb38ae7c264e8cf6ed84469dadb56acd12db259a26a9cfe',
        'DaViTFSDPStrategy._wrap_model (mmdavit/engine/strategies.py) sets model_wrapper defaults before calling '
        'it (auto_wrap_policy; device_id=cpu on CPU ranks, where mmengine passes int(LOCAL_RANK)) and relies on '
        'it building MMFullyShardedDataParallel from self.model_wrapper and setting the state-dict types'),
    'FlexibleRunner.resume': (
        FlexibleRunner.resume,
        'ed1d4658229635bf88a00124f2ba96c6c50fe0b00e104f487a351c46d101fff8',
        'DaViTFlexibleRunner.resume / call_hook (mmdavit/engine/strategies.py) take the checkpoint meta from the '
        'after_load_checkpoint hook, since this method does not return the checkpoint'),
    'FlexibleRunner.save_checkpoint': (
        FlexibleRunner.save_checkpoint,
        'aa50d00a0248375368baf9e9c929d22c8a35772ff6e868037183db23edbdb4bc',
        'DaViTFlexibleRunner.save_checkpoint (mmdavit/engine/strategies.py) calls it with a partial file name to '
        'write atomically, and relies on it passing meta through to the checkpoint'),
}


@pytest.mark.parametrize('name', sorted(PINNED))
def test_copied_mmengine_methods_are_unchanged(name):
    method, pinned, follower = PINNED[name]
    digest = hashlib.sha256(inspect.getsource(method).encode()).hexdigest()
    assert digest == pinned, (
        f'mmengine {mmengine.__version__} changed {name} (sha256 {digest}, pinned {pinned} from mmengine 0.10.7). '
        f'{follower}: diff the new source against mmengine 0.10.7\'s, port the change, then pin the new hash here')
