"""Random ops stay random in the compiled model: a decision on a draw is taken as often
as in eager (1,000 calls each, within 3 standard errors), on backends torch and onnx."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dycomp

N = 1000


class Draw(nn.Module):
    """`if <draw> > t:` for one kind of draw; returns x + 1 on the branch, x - 1 off it."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.drop = nn.Dropout(0.5)

    def draw(self, x):
        k = self.kind
        if k == "rand":
            return torch.rand(())
        if k == "randn":
            return torch.randn(3).sum()
        if k == "rand_like":
            return torch.rand_like(x).mean()
        if k == "randn_like":
            return torch.randn_like(x).sum()
        if k == "bernoulli":
            return torch.bernoulli(torch.full((), 0.3))
        if k == "multinomial":
            return torch.multinomial(torch.softmax(x[0], 0), 1)[0].float()
        if k == "uniform_":
            return torch.empty(()).uniform_(0.0, 2.0)
        if k == "normal_":
            return torch.empty_like(x).normal_(1.0, 2.0).mean()
        if k == "gumbel":
            return (-torch.empty_like(x).exponential_().log()).max()  # Gumbel noise
        if k == "dropout":
            return F.dropout(x.abs() + 1, 0.5, training=True).sum()
        if k == "dropout_module":
            return self.drop(x.abs() + 1).sum()
        if k == "categorical":
            return torch.distributions.Categorical(logits=x[0]).sample().float()
        raise ValueError(k)

    def forward(self, x):
        if self.draw(x) > THRESHOLDS[self.kind]:
            return x + 1
        return x - 1


THRESHOLDS = {"rand": 0.7, "randn": 0.5, "rand_like": 0.5, "randn_like": 0.0, "bernoulli": 0.5,
              "multinomial": 1.5, "uniform_": 0.5, "normal_": 1.0, "gumbel": 1.5,
              "dropout": 4.0, "dropout_module": 4.0, "categorical": 1.5}


def _rate(fn, x):
    return sum(bool(fn(x).sum() > x.sum()) for _ in range(N)) / N


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("kind", sorted(THRESHOLDS))
def test_draw_frequency_matches_eager(kind, backend):
    torch.manual_seed(0)
    m = Draw(kind)
    m.train(kind == "dropout_module")
    x = torch.tensor([[0.3, -1.2, 0.8, 0.1]])
    cm = dycomp.compile(m, (x,), backend=backend)  # the self-check compares structure
    torch.manual_seed(1)
    with torch.no_grad():
        eager = _rate(m, x)
    compiled = _rate(cm, x)
    p = (eager + compiled) / 2
    se = math.sqrt(max(p * (1 - p), 1e-4) * 2 / N)
    assert 0.0 < compiled < 1.0, f"{kind}: the compiled model never varies ({compiled})"
    assert abs(eager - compiled) <= 3 * se, (kind, eager, compiled)


def test_dropout_eval_is_identity():
    m = Draw("dropout_module").eval()
    x = torch.tensor([[0.3, -1.2, 0.8, 0.1]])
    cm = dycomp.compile(m, (x,), backend="onnx")
    assert all(torch.equal(cm(x), x + 1) for _ in range(20))  # |x| + 1 sums to 6.4 > 4


class Seeded(nn.Module):
    def forward(self, x):
        return x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0))


def test_explicit_generator_is_unsupported():
    with pytest.raises(dycomp.UnsupportedError, match="generator"):
        dycomp.compile(Seeded(), (torch.zeros(3),))
