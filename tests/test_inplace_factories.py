"""In-place updates of a tensor the model creates in forward with a factory
(`u = torch.empty(3); u.uniform_()`, `z[i] = v`, `z.fill_(t.item())`, `copy_`, `zero_`)
behave as in eager: the factory is recorded, so the updates are too. In-place random
draws on weights or buffers are refused (they used to keep the old value silently)."""

import math

import pytest
import torch
from torch import nn

import dycomp
from tests.helpers import assert_matches_eager, randn_inputs

N = 1000


class UniformStmt(nn.Module):
    """An in-place draw used as a statement, then a branch on it."""

    def forward(self, x):
        u = torch.empty(3)
        u.uniform_()
        if u.sum() > 1.5:
            return x + 1
        return x - 1


class NormalStmt(nn.Module):
    def forward(self, x):
        z = torch.zeros_like(x)
        z.normal_(0.0, 1.0)
        if z.mean() > 0.3:
            return x + 1
        return x - 1


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("model", [UniformStmt, NormalStmt])
def test_inplace_draw_statement_frequency(model, backend):
    x = torch.tensor([[0.3, -1.2, 0.8, 0.1]])
    m = model()
    cm = dycomp.compile(m, (x,), backend=backend, check=False)
    torch.manual_seed(1)
    eager = sum(bool(m(x).sum() > x.sum()) for _ in range(N)) / N
    compiled = sum(bool(cm(x).sum() > x.sum()) for _ in range(N)) / N
    p = (eager + compiled) / 2
    se = math.sqrt(max(p * (1 - p), 1e-4) * 2 / N)
    assert 0.0 < compiled < 1.0, compiled
    assert abs(eager - compiled) <= 3 * se, (eager, compiled)


class SetAtArgmax(nn.Module):
    """`z[idx] = 1.0` with a data-dependent index."""

    def forward(self, x):
        z = torch.zeros(4)
        idx = int(x.argmax().item())
        z[idx] = 1.0
        return x * z


class FillCopyZero(nn.Module):
    def forward(self, x):
        z = torch.zeros(2, 4)
        z.fill_(x.sum().item())
        z.add_(x)
        w = torch.ones_like(z)
        w.copy_(x * 3)
        v = torch.full((2, 4), 2.0)
        v.zero_()
        v += w
        e = torch.empty(4)
        e.fill_(x.max())
        return z, w, v, e


class BranchThenFill(nn.Module):
    """A factory result updated in place in one arm of a data-dependent branch."""

    def forward(self, x):
        z = torch.ones(4)
        if x.sum() > 0:
            z.fill_(x.min().item())
        else:
            z.copy_(x[0])
        return z * 2


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("model", [SetAtArgmax, FillCopyZero, BranchThenFill])
def test_inplace_on_factory_matches_eager(model, backend):
    assert_matches_eager(model(), randn_inputs((1, 4), 8), backend=backend)


class BufferDraw(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("b", torch.zeros(3))

    def forward(self, x):
        self.b.normal_()
        return x + self.b.sum()


def test_inplace_draw_on_buffer_is_refused():
    with pytest.raises(dycomp.UnsupportedError, match="not traced"):
        dycomp.compile(BufferDraw(), (torch.zeros(1, 4),), check=False)


class CauchyInput(nn.Module):
    def forward(self, x):
        y = x * 1
        y.cauchy_()
        return y


def test_unrecordable_inplace_method_is_refused():
    with pytest.raises(dycomp.UnsupportedError, match="cauchy_"):
        dycomp.compile(CauchyInput(), (torch.zeros(1, 4),), check=False)
