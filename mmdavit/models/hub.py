"""Weights by name: the ``hf-hub://OWNER/REPO[@REVISION][/FILE]`` checkpoint scheme.

Registered with mmengine's ``CheckpointLoader`` when mmdavit is imported, so a name works wherever mmengine
reads a checkpoint (``load_from``, ``--checkpoint``) as well as in the backbone's
``init_cfg=dict(type='Pretrained', checkpoint='hf-hub://timm/davit_tiny.msft_in1k')``.

``REVISION`` is a branch, tag or commit; one that contains ``/`` (``refs/pr/1``, ``release/v1``) is written
with ``%2F`` for each ``/`` (``@refs%2Fpr%2F1``), as the Hub's own URLs write it, since a ``/`` starts ``FILE``.
Without ``FILE`` the repository's weights are looked up as ``model.safetensors``, then
``model.safetensors.index.json`` (sharded), ``pytorch_model.bin``, ``pytorch_model.bin.index.json``.
Files go through huggingface_hub's cache: ``HF_HOME`` / ``HF_HUB_CACHE`` say where it is, and with
``HF_HUB_OFFLINE=1`` only what is cached is used. huggingface_hub is imported on first use, keeping
``import mmdavit`` fast.
"""
import json
import posixpath
from typing import List, Optional, Tuple
from urllib.parse import unquote

from mmengine.runner import CheckpointLoader

HF_HUB_PREFIX = 'hf-hub://'
DEFAULT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json')


def parse_hf_hub_name(name: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``hf-hub://OWNER/REPO[@REVISION][/FILE]`` -> (repo id, file or None, revision or None); ``%2F`` in
    ``REVISION`` stands for ``/``."""
    parts = name[len(HF_HUB_PREFIX):].split('/', 2)
    repo, at, revision = parts[1].partition('@') if len(parts) >= 2 else ('', '', '')
    if not parts[0] or not repo or (at and not revision) or (len(parts) == 3 and not parts[2]):
        raise ValueError(f'{name}: expected {HF_HUB_PREFIX}OWNER/REPO, optionally followed by @REVISION and '
                         f'/FILE (e.g. {HF_HUB_PREFIX}timm/davit_tiny.msft_in1k/model.safetensors)')
    if revision == 'refs' and len(parts) == 3:  # `@refs/pr/1`: the `/` after refs started FILE
        meant = f'refs/{"/".join(parts[2].split("/")[:2])}'  # refs/pr/N, refs/convert/NAME
        rest = parts[2].split('/', 2)[2:]
        raise ValueError(f'{name}: a revision containing "/" is written with %2F for each "/" (a "/" starts '
                         f'FILE): {HF_HUB_PREFIX}{parts[0]}/{repo}@{_encode_revision(meant)}'
                         f'{"".join("/" + file for file in rest)} names the revision {meant}')
    return f'{parts[0]}/{repo}', (parts[2] if len(parts) == 3 else None), (unquote(revision) or None)


def _encode_revision(revision: str) -> str:
    """``revision`` as written in a name (``refs/pr/1`` -> ``refs%2Fpr%2F1``)."""
    return revision.replace('/', '%2F')


def _slash_hint(name: str, repo_id: str, filename: Optional[str], revision: Optional[str]) -> str:
    """For ``@release/v1`` (read as revision ``release``, FILE ``v1``): how to write a revision with a ``/``."""
    if not (revision and filename):
        return ''
    joined = f'{revision}/{filename}'
    return (f' If you meant the revision {joined}, write its "/" as %2F: '
            f'{HF_HUB_PREFIX}{repo_id}@{_encode_revision(joined)}')


def resolve_hf_hub(name: str) -> str:
    """The local path of the weights an ``hf-hub://`` name points at, downloading them into the Hugging Face
    cache if needed and allowed. For a sharded checkpoint this is the index, with its shards beside it."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    repo_id, filename, revision = parse_hf_hub_name(name)
    candidates = [filename] if filename else list(DEFAULT_FILES)
    not_reachable: Optional[Exception] = None
    for candidate in candidates:
        try:
            # Once the hub proved unreachable, look only in the cache (each online try retries for ~20 s).
            path = hf_hub_download(repo_id, candidate, revision=revision, local_files_only=bool(not_reachable))
        except LocalEntryNotFoundError as error:  # not cached, and offline or the hub cannot be reached
            not_reachable = error
            continue
        except EntryNotFoundError:  # the repository has no such file
            continue
        except RevisionNotFoundError as error:
            raise FileNotFoundError(f'{name}: the repository {repo_id} has no revision {revision!r} (a branch, tag or '
                                    f'commit).{_slash_hint(name, repo_id, filename, revision)}') from error
        except RepositoryNotFoundError as error:  # gated and private repositories too
            raise FileNotFoundError(
                f'{name}: no repository {repo_id} on the Hugging Face Hub that you can read (check the name; for '
                f'a private or gated one, log in with `hf auth login` or set HF_TOKEN)') from error
        if candidate.endswith('.index.json'):
            _download_shards(name, repo_id, candidate, path, revision, cache_only=bool(not_reachable))
        return path
    if not_reachable is not None:
        raise FileNotFoundError(_offline_message(name, repo_id, candidates, constants, revision)) from not_reachable
    at = f' at revision {revision}' if revision else ''
    raise FileNotFoundError(f'{name}: the repository {repo_id} has none of {", ".join(candidates)}{at}; name the '
                            f'weights file: {HF_HUB_PREFIX}{repo_id}{_at(revision)}/FILE'
                            f'{_slash_hint(name, repo_id, filename, revision) if filename else ""}')


def _download_shards(name: str, repo_id: str, index_name: str, index_path: str, revision: Optional[str],
                     cache_only: bool) -> None:
    """Put the shards a sharded checkpoint's index names next to it (same repository folder); ``cache_only``
    once the hub proved unreachable, as for the index."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    with open(index_path) as f:
        shards = sorted(set(json.load(f).get('weight_map', {}).values()))
    folder = posixpath.dirname(index_name)
    shards = [posixpath.join(folder, shard) if folder else shard for shard in shards]
    for shard in shards:
        try:
            hf_hub_download(repo_id, shard, revision=revision, local_files_only=cache_only)
        except LocalEntryNotFoundError as error:
            raise FileNotFoundError(_offline_message(name, repo_id, [shard], constants, revision,
                                                     download=[index_name, *shards])) from error
        except EntryNotFoundError as error:  # the index names a shard the repository lacks
            raise FileNotFoundError(f'{name}: {index_name} of {repo_id} lists the shard {shard}, which the '
                                    f'repository does not have; name a complete checkpoint file: '
                                    f'{HF_HUB_PREFIX}{repo_id}{_at(revision)}/FILE') from error


def _at(revision: Optional[str]) -> str:
    """``@REVISION`` as written in a name, or nothing."""
    return f'@{_encode_revision(revision)}' if revision else ''


def _offline_message(name: str, repo_id: str, candidates: List[str], constants, revision: Optional[str],
                     download: Optional[List[str]] = None) -> str:
    """Why ``candidates`` (of ``revision``, default the main branch) are not available, and how to place
    ``download`` (default: the first candidate, whose path is then given instead of the name) by hand."""
    why = ('downloads are off (HF_HUB_OFFLINE=1)' if constants.HF_HUB_OFFLINE
           else 'the Hugging Face Hub could not be reached (without network, HF_HUB_OFFLINE=1 skips the retries)')
    of = f'{repo_id} at revision {revision}' if revision else repo_id
    absent = (f'{candidates[0]} of {of} is not' if len(candidates) == 1
              else f'none of {", ".join(candidates)} of {of} is')
    download = download or candidates[:1]
    # A folder of its own per revision: the main branch's copy is another file.
    local = f'checkpoints/{repo_id.split("/")[-1]}' + (f'@{revision.replace("/", "-")}' if revision else '')
    pin = f' --revision {revision}' if revision else ''
    cached = ' (cached copies of other revisions do not count)' if revision else ''
    return (f'{name}: {absent} in the Hugging Face cache ({constants.HF_HUB_CACHE}){cached} and {why}. '
            f'Place the file by hand: on a machine with network run `hf download {repo_id} {" ".join(download)}'
            f'{pin} --local-dir {local}` (older huggingface_hub: `huggingface-cli download` with the same arguments), '
            f'copy {local} here and give the path {local}/{download[0]} instead of the name; or load {name} once on '
            f'a machine with network and copy its cache folder models--{repo_id.replace("/", "--")} into '
            f'{constants.HF_HUB_CACHE} (HF_HOME selects the cache)')


@CheckpointLoader.register_scheme(prefixes=HF_HUB_PREFIX)
def load_from_hf_hub(filename: str, map_location=None) -> dict:
    """mmengine checkpoint loader for ``hf-hub://`` names: the checkpoint as stored (a torch file's content,
    or a safetensors / sharded checkpoint's tensors)."""
    from mmdavit.models.checkpoints import load_checkpoint_file
    return load_checkpoint_file(resolve_hf_hub(filename), map_location)


__all__ = ['HF_HUB_PREFIX', 'load_from_hf_hub', 'parse_hf_hub_name', 'resolve_hf_hub']
