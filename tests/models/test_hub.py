"""Weights by name: ``hf-hub://`` through the Hugging Face cache, offline, in a fresh interpreter.

The cache is laid out on disk by the test as huggingface_hub lays it out (``models--OWNER--REPO/blobs``,
``snapshots/<commit>/FILE`` links, ``refs/main``); the checkpoints in it are written by the test (timm's keys,
Florence-2's names by the test's own renaming). A fresh interpreter, because huggingface_hub reads
``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported.
"""
import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict

import pytest
import torch
from safetensors.torch import save_file

from mmdavit.models import DaViT
from mmdavit.models.hub import parse_hf_hub_name, resolve_hf_hub
from tests.models.reference import perturb_, timm_davit
from tests.models.test_checkpoints import (FLORENCE2_OTHERS, FLORENCE2_SUBLAYERS, NARROW, assert_matches_timm,
                                           save_sharded, timm_to_mmdavit, timm_to_vlm)

ROOT = Path(__file__).resolve().parents[2]
COMMIT = '0123456789abcdef0123456789abcdef01234567'

# Runs in the fresh interpreter: each case's outcome goes to OUT/<case>.pth or into the printed RESULT line.
SCRIPT = r'''
import json, sys
import torch
import mmdavit
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader
from mmdavit.models import DaViT
from mmdavit.registry import RUNNERS

out, arch = sys.argv[1], json.loads(sys.argv[2])
result = {'hub_imported_by_mmdavit': 'huggingface_hub' in sys.modules,
          'scheme_loader': CheckpointLoader._get_checkpoint_loader('hf-hub://a/b').__name__}


def backbone(name):
    model = DaViT(arch=arch, drop_path_rate=0.0, init_cfg=dict(type='Pretrained', checkpoint=name))
    model.init_weights()
    return model


torch.save(backbone('hf-hub://timm/davit_test.in1k').state_dict(), f'{out}/default_file.pth')
torch.save(backbone('hf-hub://timm/davit_test.in1k/pytorch_model.bin').state_dict(), f'{out}/named_file.pth')
torch.save(backbone('hf-hub://someone/bin-only').state_dict(), f'{out}/bin_only.pth')
torch.save(backbone('hf-hub://microsoft/Florence-2-test').state_dict(), f'{out}/sharded_vlm.pth')


class Detector(BaseModel):
    def __init__(self):
        super().__init__()
        self.backbone = DaViT(arch=arch)
        self.neck = torch.nn.Conv2d(arch['embed_dims'] * 8, 4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.neck(self.backbone(inputs)[-1])


runner = RUNNERS.get('DaViTRunner')(model=Detector(), work_dir=f'{out}/work',
                                    load_from='hf-hub://someone/detector-test')
runner.load_or_resume()
torch.save(runner.model.state_dict(), f'{out}/load_from.pth')

torch.save(backbone('hf-hub://someone/revisions@v2').state_dict(), f'{out}/revision_v2.pth')
torch.save(backbone('hf-hub://someone/revisions@refs%2Fpr%2F1').state_dict(), f'{out}/revision_pr.pth')
try:
    backbone('hf-hub://someone/revisions@dev')
except Exception as error:
    result['missing_revision'] = [type(error).__name__, str(error)]
try:
    backbone('hf-hub://nobody/absent')
except Exception as error:
    result['missing'] = [type(error).__name__, str(error)]
try:
    backbone('hf-hub://someone/shard-missing')
except Exception as error:
    result['missing_shard'] = [type(error).__name__, str(error)]
try:
    RUNNERS.get('DaViTRunner')(model=Detector(), work_dir=f'{out}/work2',
                               load_from='hf-hub://nobody/absent/epoch_12.pth').load_or_resume()
except Exception as error:
    result['missing_load_from'] = [type(error).__name__, str(error)]
print('RESULT ' + json.dumps(result))
'''


def add_to_hub_cache(hf_home: Path, repo_id: str, files: Dict[str, Path], revision: str = 'main',
                     commit: str = COMMIT) -> None:
    """Put files into huggingface_hub's cache layout, as a download of ``revision`` (at ``commit``) would."""
    repo = hf_home / 'hub' / f'models--{repo_id.replace("/", "--")}'
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / 'blobs' / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / 'snapshots' / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref = repo / 'refs' / revision  # refs/pr/1 is a file in refs/refs/pr/, as huggingface_hub stores it
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)


@pytest.fixture(scope='module')
def hub_run(tmp_path_factory):
    """One fresh offline interpreter loading every case; returns its outcomes and the weights it was given."""
    tmp = tmp_path_factory.mktemp('hub')
    files, hf_home, out = tmp / 'files', tmp / 'hf_home', tmp / 'out'
    for folder in (files, hf_home, out):
        folder.mkdir()
    reference = timm_davit(**NARROW)
    timm_state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    other_state = {k: torch.zeros_like(v) + 0.5 for k, v in timm_state.items()}
    save_file(timm_state, str(files / 'model.safetensors'))
    torch.save(other_state, files / 'pytorch_model.bin')
    add_to_hub_cache(hf_home, 'timm/davit_test.in1k', {'model.safetensors': files / 'model.safetensors',
                                                       'pytorch_model.bin': files / 'pytorch_model.bin'})
    add_to_hub_cache(hf_home, 'someone/bin-only', {'pytorch_model.bin': files / 'pytorch_model.bin'})
    # One repository, three revisions cached with different weights (dev is not cached).
    pr_state = {k: torch.zeros_like(v) + 0.25 for k, v in timm_state.items()}
    for state, revision, commit in ((timm_state, 'main', COMMIT), (other_state, 'v2', 'f' * 40),
                                    (pr_state, 'refs/pr/1', 'e' * 40)):
        folder = files / revision.replace('/', '-')
        folder.mkdir()
        save_file(state, str(folder / 'model.safetensors'))
        add_to_hub_cache(hf_home, 'someone/revisions', {'model.safetensors': folder / 'model.safetensors'}, revision,
                         commit)

    vlm = timm_to_vlm(timm_state, FLORENCE2_SUBLAYERS, 'proj', 'vision_tower.', FLORENCE2_OTHERS)
    sharded = files / 'sharded'
    sharded.mkdir()
    index = save_sharded(vlm, sharded, '.safetensors')
    add_to_hub_cache(hf_home, 'microsoft/Florence-2-test', {p.name: p for p in sharded.iterdir()})
    assert index.name == 'model.safetensors.index.json'
    add_to_hub_cache(hf_home, 'someone/shard-missing', {index.name: index})  # its shards were never fetched

    converted = timm_to_mmdavit(timm_state)  # the test's own renaming, not the code under test
    detector = {f'backbone.{k}': v for k, v in converted.items()}
    detector.update({f'backbone.norm{i}.{p}': torch.randn(16 * 2**i) for i in range(4) for p in ('weight', 'bias')})
    detector.update({'neck.weight': torch.randn(4, 128, 1, 1), 'neck.bias': torch.randn(4)})
    save_file(detector, str(files / 'detector.safetensors'))
    add_to_hub_cache(hf_home, 'someone/detector-test', {'model.safetensors': files / 'detector.safetensors'})

    env = {k: v for k, v in os.environ.items() if k not in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_TOKEN')}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    completed = subprocess.run([sys.executable, '-c', SCRIPT, str(out), json.dumps(NARROW)], cwd=tmp, env=env,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith('RESULT '))
    return dict(result=json.loads(line[len('RESULT '):]), out=out, hf_home=hf_home, reference=reference,
                timm=converted, other=timm_to_mmdavit(other_state), pr=timm_to_mmdavit(pr_state), detector=detector)


def loaded(hub_run, case: str) -> dict:
    return torch.load(hub_run['out'] / f'{case}.pth', weights_only=True)


def assert_backbone_equals(state: dict, expected: dict) -> None:
    for key, value in state.items():
        if not key.startswith('norm'):
            assert torch.equal(value, expected[key]), key


def test_import_registers_the_scheme_without_importing_huggingface_hub(hub_run):
    assert hub_run['result']['scheme_loader'] == 'load_from_hf_hub'
    assert hub_run['result']['hub_imported_by_mmdavit'] is False  # imported on first use: import stays fast


def test_init_cfg_by_name_prefers_safetensors(hub_run):
    assert_backbone_equals(loaded(hub_run, 'default_file'), hub_run['timm'])


def test_init_cfg_by_name_with_a_file(hub_run):
    assert_backbone_equals(loaded(hub_run, 'named_file'), hub_run['other'])


def test_init_cfg_by_name_falls_back_to_pytorch_model_bin(hub_run):
    assert_backbone_equals(loaded(hub_run, 'bin_only'), hub_run['other'])


def test_init_cfg_by_name_sharded_florence2_vlm(hub_run):
    model = DaViT(arch=dict(NARROW), drop_path_rate=0.0)
    model.load_state_dict(loaded(hub_run, 'sharded_vlm'))
    assert_backbone_equals(model.state_dict(), hub_run['timm'])
    assert_matches_timm(model, hub_run['reference'])


def test_load_from_by_name(hub_run):
    state = loaded(hub_run, 'load_from')
    assert sorted(state) == sorted(hub_run['detector'])
    for key, value in hub_run['detector'].items():
        assert torch.equal(state[key], value), key


def test_init_cfg_by_name_at_a_revision(hub_run):
    assert_backbone_equals(loaded(hub_run, 'revision_v2'), hub_run['other'])  # not main's weights


def test_init_cfg_by_name_at_a_revision_with_a_slash(hub_run):
    assert_backbone_equals(loaded(hub_run, 'revision_pr'), hub_run['pr'])  # @refs%2Fpr%2F1


def test_revision_not_cached_is_named_in_the_message_and_the_command(hub_run):
    """main and v2 are cached, dev is not: the message must not claim the files are absent from the cache without
    naming the revision, and the command it suggests must fetch dev (without --revision it fetches main, whose
    weights would then load as if they were dev's)."""
    kind, message = hub_run['result']['missing_revision']
    assert kind == 'FileNotFoundError'
    assert message.startswith('hf-hub://someone/revisions@dev: none of model.safetensors, '
                              'model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json of '
                              'someone/revisions at revision dev is in the Hugging Face cache '
                              f'({hub_run["hf_home"] / "hub"}) (cached copies of other revisions do not count) and '
                              'downloads are off (HF_HUB_OFFLINE=1)'), message
    assert ('`hf download someone/revisions model.safetensors --revision dev --local-dir '
            'checkpoints/revisions@dev`') in message
    assert 'give the path checkpoints/revisions@dev/model.safetensors instead of the name' in message


def test_offline_and_not_cached_says_how_to_place_the_file(hub_run):
    kind, message = hub_run['result']['missing']
    assert kind == 'FileNotFoundError'
    assert message.startswith('hf-hub://nobody/absent: none of model.safetensors, model.safetensors.index.json, '
                              'pytorch_model.bin, pytorch_model.bin.index.json of nobody/absent is in the Hugging '
                              f'Face cache ({hub_run["hf_home"] / "hub"}) and downloads are off (HF_HUB_OFFLINE=1)')
    assert '`hf download nobody/absent model.safetensors --local-dir checkpoints/absent`' in message
    assert 'give the path checkpoints/absent/model.safetensors instead of the name' in message


def test_offline_missing_shard_says_to_fetch_index_and_shards(hub_run):
    kind, message = hub_run['result']['missing_shard']
    assert kind == 'FileNotFoundError'
    assert message.startswith('hf-hub://someone/shard-missing: model-00001-of-00003.safetensors of '
                              'someone/shard-missing is not in the Hugging Face cache')
    assert ('`hf download someone/shard-missing model.safetensors.index.json model-00001-of-00003.safetensors '
            'model-00002-of-00003.safetensors model-00003-of-00003.safetensors --local-dir '
            'checkpoints/shard-missing`') in message
    assert 'give the path checkpoints/shard-missing/model.safetensors.index.json instead of the name' in message


def test_load_from_offline_and_not_cached_says_how_to_place_the_file(hub_run):
    kind, message = hub_run['result']['missing_load_from']
    assert kind == 'FileNotFoundError'  # the scheme's own error, not rewrapped by the runner
    assert message.startswith('hf-hub://nobody/absent/epoch_12.pth: epoch_12.pth of nobody/absent is not in the '
                              'Hugging Face cache')
    assert '`hf download nobody/absent epoch_12.pth --local-dir checkpoints/absent`' in message


@pytest.mark.parametrize('name,expected', [
    ('hf-hub://timm/davit_tiny.msft_in1k', ('timm/davit_tiny.msft_in1k', None, None)),
    ('hf-hub://timm/davit_tiny.msft_in1k/model.safetensors', ('timm/davit_tiny.msft_in1k', 'model.safetensors', None)),
    ('hf-hub://me/repo@v1.0/sub/dir/weights.bin', ('me/repo', 'sub/dir/weights.bin', 'v1.0')),
    ('hf-hub://me/repo@refs%2Fpr%2F1', ('me/repo', None, 'refs/pr/1')),
    ('hf-hub://me/repo@release%2fv1/weights.bin', ('me/repo', 'weights.bin', 'release/v1')),
])
def test_parse_names(name, expected):
    assert parse_hf_hub_name(name) == expected


@pytest.mark.parametrize('name', ['hf-hub://davit', 'hf-hub://timm/', 'hf-hub://timm/repo/', 'hf-hub://timm/repo@',
                                  'hf-hub://timm/repo@/model.safetensors', 'hf-hub://timm/@v1'])
def test_malformed_names_say_the_form(name):
    with pytest.raises(ValueError, match='expected hf-hub://OWNER/REPO'):
        parse_hf_hub_name(name)


@pytest.mark.parametrize('name,written', [
    ('hf-hub://me/repo@refs/pr/1', 'hf-hub://me/repo@refs%2Fpr%2F1'),
    ('hf-hub://me/repo@refs/pr/1/sub/model.safetensors', 'hf-hub://me/repo@refs%2Fpr%2F1/sub/model.safetensors'),
])
def test_refs_revision_with_slashes_says_how_to_write_it(name, written):
    with pytest.raises(ValueError) as info:
        parse_hf_hub_name(name)
    assert str(info.value) == (f'{name}: a revision containing "/" is written with %2F for each "/" (a "/" starts '
                               f'FILE): {written} names the revision refs/pr/1')


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """huggingface_hub.hf_hub_download stood in for (in-process): a sharded index in the cache, its files in
    ``tmp_path``; ``failures`` maps a file name to the error its download raises; ``calls`` records
    ``(repo_id, file, revision, local_files_only)``."""
    import huggingface_hub
    (tmp_path / 'model.safetensors.index.json').write_text(
        json.dumps({'weight_map': {'a': 'model-1.safetensors', 'b': 'model-2.safetensors'}}))
    hub = SimpleNamespace(calls=[], failures={}, folder=tmp_path)

    def download(repo_id, filename, revision=None, local_files_only=False):
        hub.calls.append((repo_id, filename, revision, local_files_only))
        if filename in hub.failures:
            raise hub.failures[filename]
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', download)
    return hub


def http_error(kind, message):
    """A huggingface_hub HTTP error as hf_hub_download raises it, with the server's 404 response (an httpx2,
    httpx or requests one, as the installed huggingface_hub uses)."""
    from huggingface_hub.errors import HfHubHTTPError
    if not issubclass(kind, HfHubHTTPError):  # huggingface_hub >= 1.0: EntryNotFoundError is not an HTTP error
        return kind(message)
    url = 'https://huggingface.co/api/models/me/repo'
    for library in ('httpx2', 'httpx'):
        try:
            http = importlib.import_module(library)
        except ImportError:
            continue
        try:
            return kind(message, response=http.Response(404, request=http.Request('GET', url)))
        except TypeError:  # this huggingface_hub takes another library's responses
            pass
    import requests
    response = requests.Response()
    response.status_code, response.url = 404, url
    return kind(message, response=response)


def test_shards_come_from_the_cache_once_the_hub_proved_unreachable(fake_hub):
    """Without network the first name (not cached) fails; from then on the index *and its shards* are looked up
    in the cache only (each online try would retry for ~20 s)."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    fake_hub.failures['model.safetensors'] = LocalEntryNotFoundError('not cached, hub unreachable')
    assert resolve_hf_hub('hf-hub://me/sharded') == str(fake_hub.folder / 'model.safetensors.index.json')
    assert fake_hub.calls == [('me/sharded', 'model.safetensors', None, False),
                              ('me/sharded', 'model.safetensors.index.json', None, True),
                              ('me/sharded', 'model-1.safetensors', None, True),
                              ('me/sharded', 'model-2.safetensors', None, True)]


@pytest.mark.parametrize('name,revision', [('hf-hub://me/sharded@v2.1', 'v2.1'),
                                           ('hf-hub://me/sharded@refs%2Fpr%2F7', 'refs/pr/7'),
                                           ('hf-hub://me/sharded@0123456789abcdef0123456789abcdef01234567',
                                            '0123456789abcdef0123456789abcdef01234567')])
def test_the_revision_reaches_every_download(fake_hub, name, revision):
    """The index and each of its shards are fetched at the named revision (a shard of main would pair another
    revision's index with the wrong tensors)."""
    from huggingface_hub.errors import EntryNotFoundError
    fake_hub.failures['model.safetensors'] = http_error(EntryNotFoundError, '404: no model.safetensors')
    assert resolve_hf_hub(name) == str(fake_hub.folder / 'model.safetensors.index.json')
    assert fake_hub.calls == [('me/sharded', file, revision, False) for file in
                              ('model.safetensors', 'model.safetensors.index.json', 'model-1.safetensors',
                               'model-2.safetensors')]


def test_revision_not_found_is_named(fake_hub):
    from huggingface_hub.errors import RevisionNotFoundError
    fake_hub.failures['model.safetensors'] = http_error(RevisionNotFoundError, '404: Revision Not Found')
    with pytest.raises(FileNotFoundError) as info:
        resolve_hf_hub('hf-hub://me/repo@v9')
    assert str(info.value) == "hf-hub://me/repo@v9: the repository me/repo has no revision 'v9' (a branch, tag or commit)."
    assert fake_hub.calls == [('me/repo', 'model.safetensors', 'v9', False)]


def test_revision_not_found_with_a_slash_says_how_to_write_it(fake_hub):
    """``@release/v1`` reads as revision ``release`` and FILE ``v1``; the message says how to name release/v1."""
    from huggingface_hub.errors import RevisionNotFoundError
    fake_hub.failures['v1'] = http_error(RevisionNotFoundError, '404: Revision Not Found')
    with pytest.raises(FileNotFoundError) as info:
        resolve_hf_hub('hf-hub://me/repo@release/v1')
    assert str(info.value) == ("hf-hub://me/repo@release/v1: the repository me/repo has no revision 'release' (a "
                               'branch, tag or commit). If you meant the revision release/v1, write its "/" as %2F: '
                               'hf-hub://me/repo@release%2Fv1')


def test_repository_not_found_is_named(fake_hub):
    from huggingface_hub.errors import RepositoryNotFoundError
    fake_hub.failures['model.safetensors'] = http_error(RepositoryNotFoundError, '401: Repository Not Found')
    with pytest.raises(FileNotFoundError) as info:
        resolve_hf_hub('hf-hub://me/no-such-repo@v2')
    assert str(info.value) == ('hf-hub://me/no-such-repo@v2: no repository me/no-such-repo on the Hugging Face Hub '
                               'that you can read (check the name; for a private or gated one, log in with `hf auth '
                               'login` or set HF_TOKEN)')
    assert len(fake_hub.calls) == 1  # not retried with the other file names


def test_no_weights_file_at_a_revision_names_it(fake_hub):
    from huggingface_hub.errors import EntryNotFoundError
    for file in ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json'):
        fake_hub.failures[file] = http_error(EntryNotFoundError, '404')
    with pytest.raises(FileNotFoundError) as info:
        resolve_hf_hub('hf-hub://me/repo@refs%2Fpr%2F3')
    assert str(info.value) == ('hf-hub://me/repo@refs%2Fpr%2F3: the repository me/repo has none of model.safetensors, '
                               'model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json at '
                               'revision refs/pr/3; name the weights file: hf-hub://me/repo@refs%2Fpr%2F3/FILE')
    assert {call[2] for call in fake_hub.calls} == {'refs/pr/3'}


def test_a_shard_the_repository_lacks_is_named(fake_hub):
    from huggingface_hub.errors import EntryNotFoundError
    fake_hub.failures['model-2.safetensors'] = EntryNotFoundError('404')
    with pytest.raises(FileNotFoundError) as info:
        resolve_hf_hub('hf-hub://me/sharded/model.safetensors.index.json')
    assert str(info.value) == ('hf-hub://me/sharded/model.safetensors.index.json: model.safetensors.index.json of '
                               'me/sharded lists the shard model-2.safetensors, which the repository does not '
                               'have; name a complete checkpoint file: hf-hub://me/sharded/FILE')


def test_load_checkpoint_takes_a_local_safetensors_file_and_sharded_index(tmp_path):
    """mmengine's own loader would torch.load these; mmdavit registers a reader for them (load_from, --checkpoint)."""
    from mmengine.runner import load_checkpoint
    source = perturb_(DaViT(arch=dict(NARROW)))
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / 'ours.safetensors'))
    keys = sorted(state)
    shards = {'a.safetensors': keys[:len(keys) // 2], 'b.safetensors': keys[len(keys) // 2:]}
    for shard, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(tmp_path / shard))
    (tmp_path / 'ours.safetensors.index.json').write_text(
        json.dumps({'weight_map': {k: shard for shard, shard_keys in shards.items() for k in shard_keys}}))
    for name in ('ours.safetensors', 'ours.safetensors.index.json'):
        model = DaViT(arch=dict(NARROW))
        load_checkpoint(model, str(tmp_path / name), map_location='cpu', strict=True)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items()), name
