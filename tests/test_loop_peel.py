"""A loop-carried value that is a Python value before a data-dependent loop and a tensor
after its first iteration (`h = None`, `acc = 0.0`): the first iteration is peeled, so
the compiled model matches eager on every trip count, on torch and ONNX (fused or not).
A number joined with a tensor and then used in a tensor op is refused."""

import pytest
import torch
from torch import nn

import dycomp
from tests.helpers import assert_matches_eager

BACKENDS = [("torch", {}), ("onnx", {}), ("onnx", {"fuse_branches": False})]


class WhileNone(nn.Module):
    """The report's loop: `h` is None on the first iteration, a tensor afterwards."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = None
        i = 0
        while i < 5:
            h = torch.tanh(self.fc(x) + (0 if h is None else h))
            s = h.sum()
            i += 1
            if s > 0:
                break
        return h, h, i


class WhileCount(nn.Module):
    """0 to 4 trips (a data-dependent bound and a break); `h` may stay None."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = None
        i = 0
        n = (x[0, 0].abs() * 2).clamp(max=4.0)
        while i < n:
            h = torch.tanh(self.fc(x) + (0 if h is None else h * 0.5))
            i += 1
            if h.sum() > 2.5:
                break
        return (x if h is None else h), i


class ForNone(nn.Module):
    """`for` over a data-dependent range, `h` None before it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = None
        n = int((x[0, 0].abs() * 2).clamp(max=4.0).item())
        for _ in range(n):
            h = torch.tanh(self.fc(x) + (0 if h is None else h))
        return x if h is None else h


class AccZero(nn.Module):
    """`acc = 0.0` then `acc = acc + tensor`: a number, then a tensor."""

    def forward(self, x):
        acc = 0.0
        i = 0
        while i < 6:
            acc = acc + x.abs()
            i += 1
            if acc.sum() > 3:
                break
        return acc, i


def _inputs():
    g = torch.Generator().manual_seed(0)
    xs = []
    for k in range(9):
        x = torch.randn(1, 4, generator=g) * (0.3 + 0.4 * (k % 4))
        x[0, 0] = 0.55 * k - 0.2
        xs.append(x)
    return xs


@pytest.mark.parametrize("backend,kw", BACKENDS)
@pytest.mark.parametrize("model", [WhileNone, WhileCount, ForNone, AccZero])
def test_none_then_tensor_matches_eager(model, backend, kw):
    torch.manual_seed(0)
    m = model().eval()
    xs = _inputs()
    assert_matches_eager(m, xs, backend=backend, **kw)
    trips = {m(x)[-1] for x in xs} if model in (WhileNone, WhileCount, AccZero) else {
        int((x[0, 0].abs() * 2).clamp(max=4.0)) for x in xs}
    assert len(trips) >= 2, trips  # several trip counts are covered


class MixedJoin(nn.Module):
    def forward(self, x):
        y = 0 if x.sum() > 0 else torch.tanh(x)
        return x * 2 + y


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_number_or_tensor_in_tensor_op_is_refused(backend):
    with pytest.raises(dycomp.UnsupportedError, match="number on some paths"):
        dycomp.compile(MixedJoin(), (torch.ones(1, 4),), backend=backend, check=False)
