"""Checkpoint files that are never half-written, and checkpoint loading errors that name the cause.

A checkpoint is written to ``.NAME.partial`` in the same folder and renamed onto ``NAME`` only once complete
(``os.replace``); ``last_checkpoint`` is replaced the same way, and outdated checkpoints (``max_keep_ckpts``)
are deleted only after the new one is in place. mmengine writes in place and deletes the oldest checkpoint
*before* writing the new one.
"""
import os
import os.path as osp
import re
from contextlib import contextmanager
from typing import Callable, Iterator, Union

import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.runner.checkpoint import _load_checkpoint

from mmdavit.registry import HOOKS

PARTIAL_PREFIX, PARTIAL_SUFFIX = '.', '.partial'


def partial_path(path: str) -> str:
    """Where ``path`` is written before it is renamed into place: a hidden file in the same folder, so that
    the rename stays on one filesystem (atomic) and a crash leaves no file under the final name."""
    folder, name = osp.split(path)
    return osp.join(folder, f'{PARTIAL_PREFIX}{name}{PARTIAL_SUFFIX}')


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, 'O_DIRECTORY', 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a temporary path to write; on success it atomically replaces ``path``, on failure it is removed
    and ``path`` is left as it was."""
    temporary = partial_path(path)
    try:
        yield temporary
        _fsync(temporary)  # the data is on disk before the name points at it
        os.replace(temporary, path)
        _fsync(osp.dirname(path) or '.', directory=True)
    except BaseException:
        if osp.exists(temporary):
            os.remove(temporary)
        raise


def write_text_atomically(path: str, text: str) -> None:
    with replacing(path) as temporary:
        with open(temporary, 'w') as f:
            f.write(text)


def is_local(path: str) -> bool:
    return isinstance(get_file_backend(path), LocalBackend)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` in a crash-safe order: write the new checkpoint (atomically, see
    :meth:`DaViTRunner.save_checkpoint`), then point ``last_checkpoint`` at it (atomically), then delete the
    checkpoints beyond ``max_keep_ckpts``. ``DaViTRunner`` uses it wherever a config asks for
    ``CheckpointHook``."""

    def _save_checkpoint_with_step(self, runner, step, meta):
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, ckpt_filename, self.file_client_args,
                               save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
                               meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old_step in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves folders
                self.file_backend.rmtree(path)


def read_checkpoint_file(filename: str, map_location: Union[str, Callable]) -> dict:
    """mmengine's ``_load_checkpoint`` with errors that name the file and the likely cause."""
    try:
        checkpoint = _load_checkpoint(filename, map_location=map_location)
    except FileNotFoundError as error:
        raise FileNotFoundError(f'Checkpoint not found: {filename} (resume=True without load_from reads the path '
                                'from WORK_DIR/last_checkpoint)') from error
    except Exception as error:  # torch raises zip, pickle, EOF and runtime errors for bad files
        lines = str(error).splitlines()
        detail = next((line.strip() for line in lines if 'Unsupported global' in line), lines[0] if lines else '')
        raise ValueError(f'Could not read checkpoint {filename} ({type(error).__name__}: {detail}). Is the file '
                         'complete (an interrupted copy or download?) and saved by torch.save? When resuming, '
                         'point --resume at the previous checkpoint') from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f'Checkpoint {filename} holds a {type(checkpoint).__name__}, not a dict of tensors '
                         '(saved with torch.save(model) instead of a state dict?)')
    return checkpoint


def check_same_model(model: torch.nn.Module, checkpoint: dict, filename: str, revise_keys: list) -> None:
    """Raise when a checkpoint shares no parameter with ``model``, or carries a backbone none of whose keys
    are ours: that is a checkpoint of another model, which mmengine would load as nothing, with a warning."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    keys = list(state_dict) if isinstance(state_dict, dict) else []
    for pattern, replacement in revise_keys:
        keys = [re.sub(pattern, replacement, k) for k in keys]
    own = set(model.state_dict())
    shown = ', '.join(keys[:5]) or '(no keys)'
    if not own.intersection(keys):
        raise ValueError(f'Checkpoint {filename} shares no parameter with this {type(model).__name__} (its keys: '
                         f'{shown}, ...): is it a checkpoint of another model? Backbone-only weights (official, '
                         'timm or mmpretrain DaViT) go in model.backbone.init_cfg=dict(type="Pretrained", '
                         'checkpoint=...), not load_from')
    backbone_keys = [k for k in keys if k.startswith('backbone.')]
    if backbone_keys and any(k.startswith('backbone.') for k in own) and not own.intersection(backbone_keys):
        raise ValueError(f'Checkpoint {filename} has a backbone none of whose parameters this model has (e.g. '
                         f'{", ".join(backbone_keys[:3])}): it was trained with another backbone. Use a '
                         'checkpoint of this config, or load only the backbone via model.backbone.init_cfg')
