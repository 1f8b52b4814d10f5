"""`type='mmdavit.DaViT'` resolves from the mmdet, mmseg and mmpretrain scopes, never to mmpretrain's."""
import subprocess
import sys

import pytest
from mmengine.registry import DefaultScope

import mmdavit.models


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_prefixed_type_resolves_in_scope(scope):
    registry = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry', 'mmpretrain': 'mmpretrain.registry'}[scope]
    models = __import__(registry, fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = models.build(dict(type='mmdavit.DaViT', arch='t', out_indices=(3, )))
    assert type(model) is mmdavit.models.DaViT


def test_plain_name_in_mmpretrain_scope_stays_mmpretrain():
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        theirs = MODELS.build(dict(type='DaViT', arch='t'))
    assert type(theirs).__module__.startswith('mmpretrain.')


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg', 'mmpretrain'])
def test_fresh_interpreter_needs_no_import(scope):
    code = (f'from {scope}.registry import MODELS\n'
            'from mmengine.registry import DefaultScope\n'
            f'DefaultScope.get_instance("t", scope_name="{scope}")\n'
            'm = MODELS.build(dict(type="mmdavit.DaViT", arch="t"))\n'
            'print(type(m).__module__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == 'mmdavit.models.davit'
