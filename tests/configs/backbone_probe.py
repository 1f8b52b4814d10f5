"""A test hook that shows a training run reached the backbone: every part of DaViT got a gradient and moved.

From scratch, a detector's loss can fall without any feature (RPN objectness and class biases learn alone),
so a falling loss says nothing about the backbone. ``BackboneProbe`` records, at every optimizer step, which
parts of the model hold a non-zero finite gradient, and at the end of training which of their parameters
changed; each rank writes ``WORK_DIR/backbone_probe_rank{rank}.json``. Parts: in the backbone ``stem``, each
``stages.i.downsample``, each DaViT layer ``stages.i.blocks.j``, each output norm ``norm{i}`` (prefixed with
``backbone.``); elsewhere the model's top-level modules (``neck``, ``rpn_head``, ...).

Self-contained (torch and mmengine only), so that a training subprocess can import it from a copy outside
the repository (``custom_imports`` + ``PYTHONPATH``). Registered in mmengine's root registry: it resolves
from any default scope.
"""
import json
import os.path as osp
import re
from collections import defaultdict

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


def model_part(name: str) -> str:
    """``backbone.stages.1.blocks.0.spatial.mlp.fc1.weight`` -> ``backbone.stages.1.blocks.0`` (one DaViT
    layer); ``backbone.stages.1.downsample.conv.weight`` -> ``backbone.stages.1.downsample``;
    ``backbone.stem.conv.weight`` -> ``backbone.stem``; ``neck.lateral_convs.0.conv.weight`` -> ``neck``."""
    match = re.match(r'backbone\.(stages\.\d+\.(blocks\.\d+|downsample)|[^.]+)', name)
    return match.group(0) if match else name.split('.')[0]


def probe_path(work_dir, rank: int = 0) -> str:
    return osp.join(work_dir, f'backbone_probe_rank{rank}.json')


@HOOKS.register_module(force=True)
class BackboneProbe(Hook):
    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.params = dict(model.named_parameters())
        self.initial = {name: p.detach().clone() for name, p in self.params.items()}
        self.parts = defaultdict(list)
        for name in self.params:
            self.parts[model_part(name)].append(name)
        self.steps = 0
        self.steps_with_gradient = dict.fromkeys(self.parts, 0)
        self.handle = runner.optim_wrapper.optimizer.register_step_pre_hook(self.record_gradients)

    def record_gradients(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        for part, names in self.parts.items():
            grads = [self.params[n].grad for n in names if self.params[n].grad is not None]
            if any(bool(g.abs().sum() > 0) for g in grads) and all(bool(torch.isfinite(g).all()) for g in grads):
                self.steps_with_gradient[part] += 1

    def after_train(self, runner) -> None:
        self.handle.remove()
        parts = {}
        for part, names in self.parts.items():
            moved = [n for n in names if not torch.equal(self.initial[n], self.params[n].detach())]
            parts[part] = dict(params=len(names), moved=len(moved), steps_with_gradient=self.steps_with_gradient[part])
        with open(probe_path(runner.work_dir, get_rank()), 'w') as f:
            json.dump(dict(steps=self.steps, parts=parts), f, indent=1)


def read_probe(work_dir, rank: int = 0) -> dict:
    with open(probe_path(work_dir, rank)) as f:
        return json.load(f)


def assert_backbone_learned(work_dir, steps: int, rank: int = 0, min_layers: int = 4) -> None:
    """Every part of the backbone got a non-zero gradient at each of ``steps`` optimizer steps, and every
    one of its parameters moved (a detached or frozen backbone fails both)."""
    probe = read_probe(work_dir, rank)
    assert probe['steps'] == steps, probe['steps']
    parts = {p: r for p, r in probe['parts'].items() if p.startswith('backbone.')}
    layers = [p for p in parts if '.blocks.' in p]
    assert 'backbone.stem' in parts and len(layers) >= min_layers, sorted(parts)
    no_gradient = {p: r['steps_with_gradient'] for p, r in parts.items() if r['steps_with_gradient'] != steps}
    assert not no_gradient, f'backbone parts without a gradient at some of the {steps} steps: {no_gradient}'
    unmoved = {p: f"{r['moved']} of {r['params']}" for p, r in parts.items() if r['moved'] != r['params']}
    assert not unmoved, f'backbone parameters that training did not change: {unmoved}'
