"""Switches over alike options (`experts[i](x)`) lowered as one copy of the option with
its weights gathered by `i` (`dycomp.backends.onnx_switch`), not a chain of `If`s."""

from __future__ import annotations

import torch
from torch import nn

import dycomp
from dycomp.backends import onnx_switch
from dycomp.backends.onnx_backend import all_nodes
from tests.helpers import assert_matches_eager, randn_inputs


def _mlp(hidden: int = 16):
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 8))


class Experts(nn.Module):
    """Top-1 routing to one of three options; `alike=False` mixes two kinds of module."""

    def __init__(self, alike: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.router = nn.Linear(8, 3)
        self.experts = nn.ModuleList([_mlp(), _mlp(), _mlp()] if alike else
                                     [_mlp(), nn.Linear(8, 8), _mlp()])

    def forward(self, x):
        i = int(self.router(x).argmax(-1).item())
        return self.experts[i](x) * 2.0, i


def _compile(model):
    return dycomp.compile(model, (torch.randn(1, 8),), backend="onnx", check=False)


def _ops(cm) -> list:
    (model,) = (r.onnx for r in cm.graph.regions.values())
    return [n.op_type for n in all_nodes(model.graph)]


def _inputs():
    inputs = randn_inputs((1, 8), 60)
    routes = {int(Experts().router(x).argmax()) for x in inputs}
    assert routes == {0, 1, 2}, routes  # every option is taken
    return inputs


def test_alike_options_are_one_graph_with_gathered_weights_and_the_same_paths():
    model = Experts()
    cm = _compile(model)
    ops = _ops(cm)
    assert "If" not in ops and ops.count("Gather") >= 4, ops  # 2 weights + 2 biases
    host = dycomp.compile(model, (torch.randn(1, 8),), backend="onnx", check=False,
                          fuse_branches=False)
    _, paths = assert_matches_eager(model, _inputs(), cm=cm)
    _, host_paths = assert_matches_eager(model, _inputs(), cm=host)
    assert paths == host_paths and len(set(paths)) == 3  # the regions of the option run


def test_options_that_differ_keep_their_ifs():
    model = Experts(alike=False)
    cm = _compile(model)
    assert "If" in _ops(cm)
    assert_matches_eager(model, _inputs(), cm=cm)


def test_options_too_large_to_copy_per_call_keep_their_ifs(monkeypatch):
    monkeypatch.setattr(onnx_switch, "GATHER_MAX_WEIGHTS", 100)
    model = Experts()
    cm = _compile(model)
    assert "If" in _ops(cm)
    assert_matches_eager(model, _inputs(), cm=cm)


class UserChain(nn.Module):
    """`if i == 0: ... elif i == 1: ... else: ...` written out over alike modules: the
    `else` takes every other index, so it is not a switch and keeps its `If`s."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.router = nn.Linear(8, 5)
        self.a, self.b, self.c = (_mlp(64) for _ in range(3))  # too big to speculate

    def forward(self, x):
        i = int(self.router(x).argmax(-1).item())
        if i == 0:
            y = self.a(x)
        elif i == 1:
            y = self.b(x)
        else:
            y = self.c(x)
        return y, i


def test_an_if_elif_chain_the_user_wrote_keeps_its_meaning():
    model = UserChain()
    cm = _compile(model)
    assert "If" in _ops(cm)
    outs = []
    assert_matches_eager(model, randn_inputs((1, 8), 60), cm=cm, outputs=outs)
    assert {o[1] for o in outs} >= {0, 1, 3}, {o[1] for o in outs}  # the else: 2, 3, 4
