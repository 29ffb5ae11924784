"""Counted loops (`for i in range(N)`, static N) that may leave early: unrolled when the
body is not uniform across iterations, one host loop when it is (issues #21, #22.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import assert_matches_eager
from torch import nn

from dycomp.ir.program import Loop, walk


class StagesExit(nn.Module):
    """Stages of different widths indexed by the loop counter, early return (#22.4)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        chans = [3, 8, 16, 16]
        self.stages = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1)
                                    for i in range(3))
        self.heads = nn.ModuleList(nn.Linear(chans[i + 1], 4) for i in range(3))
        self.t = [0.6, 0.3, 0.1555]

    def forward(self, x):
        for k in range(3):
            x = F.relu(self.stages[k](x))
            logits = self.heads[k](x.mean((2, 3)))
            if logits.max() > self.t[k]:
                return logits, k
        return logits, 3


class MultiScale(nn.Module):
    """The carried value goes from an image tensor to a list of features (#21)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.blocks = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1),
                                     nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                     nn.Conv2d(8, 8, 3, stride=2, padding=1)])
        self.head = nn.Linear(8, 3)
        self.t = [0.6, 0.15, 0.1]

    def forward(self, x):
        feats = x
        for i in range(3):
            prev = feats if i == 0 else feats[-1]
            y = F.relu(self.blocks[i](prev))
            feats = [y] if i == 0 else feats + [y]
            if y.mean() > self.t[i]:
                return self.head(y.mean((2, 3))), len(feats)
        return sum(self.head(f.mean((2, 3))) for f in feats), len(feats)


class Uniform(nn.Module):
    """Alike layers indexed by the counter: the body stays one host loop."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        for i in range(4):
            x = torch.tanh(self.layers[i](x))
            if x.sum() > 0.6:
                return x, i
        return x, -1


def _inputs(shape, n=30):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g) * s for s in [0.1, 0.5, 1, 2, 4] * (n // 5)]


def _loops(cm) -> int:
    return sum(isinstance(s, Loop) for s in walk(cm.graph.body))


def _check(model, shape, exits, backend, loops):
    xs = _inputs(shape)
    with torch.no_grad():
        assert {model(x)[1] for x in xs} == exits  # the inputs cover every path
    cm, _ = assert_matches_eager(model, xs, backend=backend, fuse_branches=False)
    assert _loops(cm) == loops


def test_stages_of_different_widths_unrolled():
    for backend in ("torch", "onnx"):
        _check(StagesExit(), (1, 3, 8, 8), {0, 1, 2, 3}, backend, loops=0)


def test_carried_value_changes_type_unrolled():
    for backend in ("torch", "onnx"):
        _check(MultiScale(), (1, 3, 8, 8), {1, 2, 3}, backend, loops=0)


def test_uniform_body_stays_one_host_loop():
    for backend in ("torch", "onnx"):
        _check(Uniform(), (1, 8), {-1, 0, 1, 3}, backend, loops=1)
