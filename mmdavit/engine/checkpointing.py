"""Checkpoint files that are never half-written, and checkpoint loading errors that name the cause.

A checkpoint is written to ``.NAME.partial`` in the folder it goes to and renamed onto ``NAME`` only once
complete (``os.replace``); with :class:`AtomicCheckpointHook`, ``last_checkpoint`` is replaced the same way
and outdated checkpoints (``max_keep_ckpts``) are deleted only after the new one is in place. mmengine's
``CheckpointHook`` writes in place and deletes the oldest checkpoint *before* writing the new one.

Loading checks what the user asked for: ``load_from`` must give this model's backbone most of its weights
(or set ``load_from_skip_backbone=True`` to load only neck and heads), ``resume`` needs a checkpoint of this
very model, and errors for missing, unreadable or foreign files speak of the one the user named.
"""
import glob
import math
import os
import os.path as osp
import re
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.runner.checkpoint import _load_checkpoint

from mmdavit.compat import RefusedCheckpoint
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


def save_atomically(save: Callable[[str, str], object], out_dir: str, filename: str, local: bool = True,
                    writer: bool = True) -> None:
    """Call ``save(out_dir, name)`` (mmengine's ``save_checkpoint`` of either runner) so that
    ``out_dir/filename`` appears complete or not at all: ``name`` is the partial file's path relative to
    ``out_dir``, beside the final name even when ``filename`` has folders (``filename_tmpl='ckpts/iter_{}.pth'``;
    mmengine creates them), renamed into place by the ``writer`` (the rank that writes; the other ranks of a
    FlexibleRunner call ``save`` too, to gather FSDP's shards). Not ``local`` (another storage backend): ``save``
    writes ``filename`` itself, as mmengine does."""
    if not local:
        save(out_dir, filename)
        return
    path = osp.join(out_dir, filename)
    with replacing(path) if writer else nullcontext(partial_path(path)) as temporary:
        save(out_dir, osp.relpath(temporary, out_dir))


def write_text_atomically(path: str, text: str) -> None:
    with replacing(path) as temporary:
        with open(temporary, 'w') as f:
            f.write(text)


def is_local(path: str) -> bool:
    """mmengine's own rule (``fileio.io._parse_uri_prefix``): a path without ``scheme://`` is a local file.
    Anything else (``http://``, ``s3://``, ``hf-hub://``, ``open-mmlab://`` ...) is for mmengine's storage
    backends and ``CheckpointLoader`` schemes to resolve, not for local-file checks."""
    return '://' not in str(path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` in a crash-safe order: write the new checkpoint (atomically, see
    :meth:`DaViTRunner.save_checkpoint`), then point ``last_checkpoint`` at it (atomically), then delete the
    checkpoints beyond ``max_keep_ckpts``. Our configs name it in ``default_hooks.checkpoint``; it takes
    ``CheckpointHook``'s arguments.

    Its ``_save_checkpoint_with_step`` is mmengine 0.10.7's, reordered: ``tests/engine/test_upstream_copies.py``
    fails when the installed mmengine's version changes."""

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


# What the user did, for messages that fit it: `load_from=PATH` (resume=False), `--resume PATH`
# (resume=True, load_from=PATH), or `--resume` / resume=True alone (the path comes from last_checkpoint).
LOAD_FROM, RESUME, AUTO_RESUME = 'load_from', 'resume', 'auto_resume'
SKIP_BACKBONE_KEY = 'load_from_skip_backbone'  # config key: load_from loads neck and heads only
# load_from must give the backbone at least this share of its weights (elements matching by name and shape);
# a checkpoint of another backbone that happens to share a few names (Swin's norm0..3) gives ~0.
MIN_BACKBONE_SHARE = 0.5
BACKBONE_PREFIX = 'backbone.'


def check_local_file(filename: str, origin: str, work_dir: Optional[str] = None) -> None:
    """Raise for a local checkpoint path that is missing or a folder, in the words of what the user did."""
    if osp.isdir(filename):
        # load_from also takes safetensors and sharded indexes (mmdavit.models.hub); resuming needs a Runner .pth
        kinds = ('.pth', '.safetensors', '.index.json') if origin == LOAD_FROM else ('.pth', )
        found = sorted((path for kind in kinds for path in glob.glob(osp.join(filename, '*' + kind))),
                       key=osp.getmtime)[-3:]
        named = ', '.join(kinds[:-1]) + f' or {kinds[-1]}' if len(kinds) > 1 else kinds[0]
        inside = f'it holds {", ".join(map(osp.basename, found))}' if found else f'it holds no {named} file'
        what = 'load_from' if origin == LOAD_FROM else 'The checkpoint to resume from,'
        raise IsADirectoryError(f'{what} {filename} is a folder, not a checkpoint file ({inside}): give the '
                                f'path of the {named} file')
    if osp.exists(filename):
        return
    where = '' if osp.isabs(filename) else f' (relative to {os.getcwd()})'
    if origin == LOAD_FROM:
        raise FileNotFoundError(f'load_from checkpoint not found: {filename}{where}')
    if origin == RESUME:
        raise FileNotFoundError(f'Checkpoint to resume from not found: {filename}{where}')
    pointer = osp.join(work_dir or '.', 'last_checkpoint')
    raise FileNotFoundError(f'Checkpoint to resume from not found: {filename}, named by {pointer} (moved or '
                            'deleted?). Resume from an existing checkpoint with --resume PATH (resume=True, '
                            'load_from=PATH), or delete last_checkpoint to start a new run in this work dir')


def read_checkpoint_file(filename: str, map_location: Union[str, Callable], origin: str = LOAD_FROM,
                         work_dir: Optional[str] = None) -> dict:
    """mmengine's ``_load_checkpoint`` with errors that name the file, the likely cause and a fix that fits
    ``origin`` (``LOAD_FROM``, ``RESUME`` or ``AUTO_RESUME``). URLs and other schemes go to mmengine's
    ``CheckpointLoader`` unchecked."""
    if is_local(filename):
        check_local_file(osp.expanduser(filename), origin, work_dir)  # mmengine expands ~ too
    try:
        checkpoint = _load_checkpoint(filename, map_location=map_location)
    except RefusedCheckpoint:
        raise  # names the file and why: it would run code, whatever torch's version and wording
    except Exception as error:  # torch raises zip, pickle, EOF and runtime errors for bad files
        if isinstance(error, FileNotFoundError) and not is_local(filename):
            raise  # a scheme's own error (hf-hub:// not cached, offline) names the file and how to place it
        lines = str(error).splitlines()
        detail = lines[0] if lines else ''
        if not is_local(filename):
            advice = 'Is the address right and reachable, and does it hold a torch.save checkpoint?'
        elif origin == LOAD_FROM:
            advice = 'Is the file complete (an interrupted copy or download?) and saved by torch.save?'
        else:
            advice = ('Is the file complete and saved by torch.save? To resume anyway, point --resume at an '
                      "earlier checkpoint of the run (resume=True, load_from=PATH)")
        raise ValueError(f'Could not read checkpoint {filename} ({type(error).__name__}: {detail}). '
                         f'{advice}') from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f'Checkpoint {filename} holds a {type(checkpoint).__name__}, not a dict of tensors '
                         '(saved with torch.save(model) instead of a state dict?)')
    return checkpoint


def revised_key(key: str, revise_keys: list) -> str:
    """A checkpoint key as mmengine loads it: after each ``(pattern, replacement)`` of ``revise_keys``."""
    for pattern, replacement in revise_keys:
        key = re.sub(pattern, replacement, key)
    return key


def checkpoint_shapes(checkpoint: dict, revise_keys: list) -> Dict[str, Optional[torch.Size]]:
    """Parameter name (after ``revise_keys``, as mmengine loads it) -> shape, of a checkpoint's weights."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    items = state_dict.items() if isinstance(state_dict, dict) else []
    return {revised_key(key, revise_keys): getattr(value, 'shape', None) for key, value in items}


def _examples(names, count: int = 3) -> str:
    names = list(names)
    return ', '.join(names[:count]) + (', ...' if len(names) > count else '')


def backbone_share(weights: Dict[str, torch.Tensor], loaded) -> float:
    """The share of a backbone's weights (its state dict), by element count, that the names ``loaded`` give it:
    ``load_from`` and ``init_cfg`` both refuse a checkpoint below ``MIN_BACKBONE_SHARE`` unless told otherwise."""
    total = sum(v.numel() for v in weights.values())
    return sum(weights[k].numel() for k in set(loaded)) / total if total else 1.0


def check_same_model(model: torch.nn.Module, checkpoint: dict, filename: str, revise_keys: list,
                     skip_backbone: bool = False) -> None:
    """Raise when ``load_from`` would load (almost) nothing of ``model``: no shared parameter at all, or less
    than ``MIN_BACKBONE_SHARE`` of the backbone's weights (by element count, names *and* shapes matching) —
    a checkpoint of another model or backbone, which mmengine would load partly, with a warning.
    ``skip_backbone`` (``load_from_skip_backbone=True``) waives the backbone check."""
    theirs = checkpoint_shapes(checkpoint, revise_keys)
    own = model.state_dict()
    if not set(own).intersection(theirs):
        raise ValueError(f'Checkpoint {filename} shares no parameter with this {type(model).__name__} (its keys: '
                         f'{_examples(theirs, 5) or "(no keys)"}): is it a checkpoint of another model? '
                         'Backbone-only weights (official, timm or mmpretrain DaViT) go in '
                         'model.backbone.init_cfg=dict(type="Pretrained", checkpoint=...), not load_from')
    backbone = {k: v for k, v in own.items() if k.startswith(BACKBONE_PREFIX)}
    total = sum(v.numel() for v in backbone.values())
    if skip_backbone or total == 0:
        return
    loads = [k for k, v in backbone.items() if theirs.get(k) == v.shape]
    share = backbone_share(backbone, loads)
    if share >= MIN_BACKBONE_SHARE:
        return
    their_backbone = [k for k in theirs if k.startswith(BACKBONE_PREFIX)]
    shape_differs = [k for k in backbone if k in theirs and k not in loads]
    found = (f'its backbone keys: {_examples(their_backbone)}' if their_backbone else 'it has no backbone.* keys')
    if shape_differs:
        found += f'; same name, other shape: {_examples(shape_differs)}'
    raise ValueError(f'Checkpoint {filename} would load only {share:.1%} of the weights of this model\'s '
                     f'{type(model.backbone).__name__} backbone ({len(loads)} of {len(backbone)} tensors match '
                     f'by name and shape; {found}): it was trained with another backbone. Use a checkpoint of '
                     'this model; put backbone-only weights in model.backbone.init_cfg; or, to load only the '
                     f'neck and heads from it, set {SKIP_BACKBONE_KEY}=True in the config (the backbone then '
                     'keeps its init_cfg weights)')


def without_backbone(checkpoint: dict, revise_keys: list) -> Tuple[dict, int]:
    """The checkpoint without its backbone weights (for ``load_from_skip_backbone``), and how many it held."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    kept = OrderedDict((key, value) for key, value in state_dict.items()
                       if not revised_key(key, revise_keys).startswith(BACKBONE_PREFIX))
    kept._metadata = getattr(state_dict, '_metadata', OrderedDict())  # norm layers' versions, as torch keeps
    return dict(checkpoint, state_dict=kept), len(state_dict) - len(kept)


def check_resumable(model: torch.nn.Module, checkpoint: dict, filename: str, revise_keys: list) -> None:
    """Raise unless the checkpoint holds exactly this model's parameters (names and shapes): resuming a
    checkpoint of another model would load it partly and then fail in torch with a param-group-size error."""
    theirs = checkpoint_shapes(checkpoint, revise_keys)
    own = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    reshaped = [f'{k} {tuple(theirs[k])} vs {tuple(own[k])}' for k in own if k in theirs and theirs[k] != own[k]]
    if not (missing or unexpected or reshaped):
        return
    problems = []
    if missing:
        problems.append(f'{len(missing)} of this {type(model).__name__}\'s {len(own)} parameters are not in it '
                        f'({_examples(missing)})')
    if unexpected:
        problems.append(f'{len(unexpected)} of its parameters are not in this model ({_examples(unexpected)})')
    if reshaped:
        problems.append(f'{len(reshaped)} have another shape (checkpoint vs model: {_examples(reshaped, 2)})')
    raise ValueError(f'Cannot resume from {filename}: it is a checkpoint of another model ({"; ".join(problems)}). '
                     'Resuming continues a run of this same config; resume from a checkpoint of it, or start a '
                     'new run from these weights with load_from=PATH and resume=False')


def checked_for_loading(model: torch.nn.Module, checkpoint: dict, filename: str, revise_keys: list, origin: str,
                        skip_backbone: bool, logger) -> dict:
    """The checkpoint to load into ``model`` (unwrapped, or its unsharded twin) after the checks that fit
    ``origin``: ``load_from`` must share the backbone (or, with ``skip_backbone``, loads neck and heads only);
    a resume needs this very model (and loads the backbone whatever ``skip_backbone`` says)."""
    if origin == LOAD_FROM:
        check_same_model(model, checkpoint, filename, revise_keys, skip_backbone)
        if skip_backbone:
            checkpoint, skipped = without_backbone(checkpoint, revise_keys)
            logger.info(f'{SKIP_BACKBONE_KEY}=True: loading neck and heads from {filename}, not its {skipped} '
                        'backbone tensors (the backbone keeps its init_cfg weights)')
        return checkpoint
    if skip_backbone:
        logger.warning(f'{SKIP_BACKBONE_KEY}=True applies to load_from only: resuming loads all of {filename}, '
                       'backbone included (it continues that run)')
    check_resumable(model, checkpoint, filename, revise_keys)
    return checkpoint


# Optimizer settings that are bookkeeping, not hyper-parameters a user sets
OPTIMIZER_BOOKKEEPING = ('params', 'param_names', 'lr', 'initial_lr', 'group_name', 'layer_id', 'lr_scale')


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _base_settings(optimizer_state: dict) -> dict:
    """The settings the optimizer was built with: mmengine keeps them as ``base_param_settings`` when there
    are several param groups; the lr before any schedule is ``initial_lr``."""
    settings = optimizer_state.get('base_param_settings') or (optimizer_state.get('param_groups') or [{}])[0]
    settings = dict(settings)
    settings['lr'] = settings.get('initial_lr', settings.get('lr'))
    return settings


def optimizer_overrides(configured: dict, checkpointed: dict) -> List[Tuple[str, object, object]]:
    """``(name, config value, checkpoint value)`` of each optimizer hyper-parameter the checkpoint's state
    replaces on resume (its lr before scheduling, weight_decay, betas, momentum, ...)."""
    config, checkpoint = _base_settings(configured), _base_settings(checkpointed)
    names = ['lr'] + sorted(k for k in config if k in checkpoint and k not in OPTIMIZER_BOOKKEEPING)
    return [(k, config[k], checkpoint[k]) for k in names if k in config and k in checkpoint
            and not _same(config[k], checkpoint[k])]


# --- optimizer states keyed by position (torch's optimizers: one process, DDP) or by parameter name (FSDP) ----
# A resume may cross between the two: an FSDP run resumed without sharding (one process, DaViTRunner, DDP),
# or a DDP / one-process checkpoint resumed under FSDP (after running out of memory, or on more ranks).
PARAM_NAMES_META_KEY = 'optimizer_param_names'  # in checkpoint['meta']: each optimizer position's name


def numbered_param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """The name of each parameter of ``optimizer`` (of the unwrapped ``model``) in the order its state dict
    numbers them: group after group, as torch numbers them."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names.get(id(param), '') for group in optimizer.param_groups for param in group['params']]


def is_keyed_by_name(optimizer_state: dict) -> bool:
    return any(isinstance(key, str) for group in optimizer_state.get('param_groups', []) for key in group['params'])


def _check_state_shapes(state: dict, shapes: Dict[str, torch.Size], filename: str, how: str) -> None:
    for name, values in state.items():
        for key, value in values.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != shapes[name]:
                raise ValueError(f'Cannot resume the optimizer state of {filename}: its {key} of {name} ({how}) '
                                 f'has shape {tuple(value.shape)}, the parameter {tuple(shapes[name])}. Was it '
                                 'saved with another optimizer constructor or paramwise_cfg? Resume with the '
                                 'config that wrote it, or start a new run from its weights (load_from=PATH, '
                                 'resume=False)')


def optimizer_state_by_name(optimizer_state: dict, shapes: Dict[str, torch.Size], filename: str,
                            names: Optional[List[str]] = None) -> dict:
    """An optimizer state dict keyed by position (torch's) keyed by parameter name, as
    ``FSDP.optim_state_dict_to_load`` takes it. ``names``: the parameter of each position, as our runners
    record it (``PARAM_NAMES_META_KEY``); checkpoints without it are numbered in ``shapes``' order, the
    model's ``named_parameters()``, which is the order mmengine's optimizer constructors add parameters in
    (checked by shape)."""
    if is_keyed_by_name(optimizer_state):
        return optimizer_state
    groups = optimizer_state['param_groups']
    count = sum(len(group['params']) for group in groups)
    recorded = names is not None
    names = list(names) if recorded else list(shapes)
    if len(names) != count or not set(names) <= set(shapes):
        unknown = [name for name in names if name not in shapes]
        found = (f'parameters this model does not have ({_examples(unknown)})' if unknown else
                 f'{count} parameters, this model {len(shapes)}')
        raise ValueError(f'Cannot resume the optimizer state of {filename}: it holds {found}. Resume with the config '
                         'that wrote it, or start a new run from its weights (load_from=PATH, resume=False)')
    name_of = {index: names[position] for position, index in
               enumerate(index for group in groups for index in group['params'])}
    state = {name_of[index]: values for index, values in optimizer_state['state'].items()}
    _check_state_shapes(state, shapes, filename,
                        'by the names the checkpoint records' if recorded else "by position, in the model's order")
    return dict(optimizer_state, state=state,
                param_groups=[dict(group, params=[name_of[index] for index in group['params']]) for group in groups])


def optimizer_state_by_index(optimizer_state: dict, group_names: List[List[str]], shapes: Dict[str, torch.Size],
                             filename: str) -> dict:
    """An optimizer state dict keyed by parameter name (FSDP's) keyed by position, for a torch optimizer
    whose parameter groups hold the parameters named in ``group_names``; each group takes the settings (lr,
    initial_lr, weight_decay, ...) of the checkpoint's group that holds its parameters."""
    if not is_keyed_by_name(optimizer_state):
        return optimizer_state
    saved_group = {name: group for group in optimizer_state['param_groups'] for name in group['params']}
    wanted = [name for names in group_names for name in names]
    missing = [name for name in wanted if name not in saved_group]
    if missing or len(saved_group) != len(wanted):
        found = (f'{len(missing)} of this optimizer\'s parameters are not in it ({_examples(missing)})' if missing
                 else f'it holds {len(saved_group)} parameters, this optimizer {len(wanted)}')
        raise ValueError(f'Cannot resume the optimizer state of {filename}: {found}. Resume with the config that '
                         'wrote it, or start a new run from its weights (load_from=PATH, resume=False)')
    param_groups, index_of, position = [], {}, 0
    for names in group_names:
        sources = [saved_group[name] for name in names]
        settings = [{k: v for k, v in group.items() if k not in ('params', 'param_names')} for group in sources]
        if any(s.keys() != settings[0].keys() or not all(_same(s[k], settings[0][k]) for k in s)
               for s in settings[1:]):
            raise ValueError(f'Cannot resume the optimizer state of {filename}: its parameter groups differ from '
                             f'this optimizer\'s ({names[0]} and {names[-1]} share a group here, with different '
                             'settings there). Resume with the paramwise_cfg that wrote it')
        group = dict(settings[0]) if settings else {}
        group['params'] = list(range(position, position + len(names)))
        index_of.update(zip(names, group['params']))
        position += len(names)
        param_groups.append(group)
    _check_state_shapes(optimizer_state['state'], shapes, filename, 'by name')
    state = {index_of[name]: values for name, values in optimizer_state['state'].items()}
    return dict(optimizer_state, state=state, param_groups=param_groups)


def optimizer_state_for(optimizer: torch.optim.Optimizer, model: torch.nn.Module, optimizer_state: dict,
                        filename: str) -> dict:
    """``optimizer_state`` (a checkpoint's, keyed by position or by name) keyed by position for ``optimizer``,
    a torch optimizer of the unwrapped ``model`` (one process, DaViTRunner, DDP)."""
    if not is_keyed_by_name(optimizer_state):
        return optimizer_state
    names = {id(param): name for name, param in model.named_parameters()}
    group_names = [[names[id(param)] for param in group['params']] for group in optimizer.param_groups]
    shapes = {name: param.shape for name, param in model.named_parameters()}
    return optimizer_state_by_index(optimizer_state, group_names, shapes, filename)


# --- what a resume keeps from the checkpoint although the config says otherwise ---------------------------
# Scheduler attributes that are its progress or follow from other settings (total_iters = end - begin - 1), not
# settings a user writes in param_scheduler
SCHEDULER_BOOKKEEPING = ('last_step', 'base_values', 'verbose', 'best', 'num_bad_epochs', 'cooldown_counter',
                         'total_iters')


def scheduler_overrides(configured: list, checkpointed: list) -> List[Tuple[str, str, object, object]]:
    """``(scheduler, setting, config value, checkpoint value)`` of each parameter-scheduler setting (begin,
    end, factors, milestones, T_max, eta_min, ...) the checkpoint's scheduler state replaces on resume;
    ``configured`` are the built schedulers, paired with the checkpoint's states in order as mmengine does."""
    changes = []
    for index, (scheduler, saved) in enumerate(zip(configured, checkpointed)):
        own = scheduler.state_dict()
        label = f'param_scheduler[{index}] {type(scheduler).__name__}'
        for key in own:
            if key.startswith('_') or key in SCHEDULER_BOOKKEEPING or key not in saved or callable(own[key]):
                continue
            if not _same(own[key], saved[key]):
                changes.append((label, key, own[key], saved[key]))
    return changes
