"""`.data` is the traced value itself, `.detach()` an op (no frozen example values).

The ONNX exporter records `.data` as a constant holding the example's value: a
block-dropping ResNet handed `policy.data.squeeze(0)` ran the example's blocks on every
input. Each model here is compared with eager PyTorch on inputs covering its paths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dycomp
from dycomp.check import compare
from examples import blockdrop
from tests.helpers import assert_matches_eager, randn_inputs

BACKENDS = ["torch", "onnx"]


@pytest.fixture
def one_thread():
    """Eager batch-1 convolutions: one thread (two wait on each other on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_blockdrop_matches_eager_on_every_policy(backend, one_thread):
    model, example = blockdrop.make(blocks=2, widths=(4, 8, 8), size=16)
    cm = dycomp.compile(model, example, backend=backend)  # default self-check on
    policies: dict = {}
    for i, inputs in enumerate(blockdrop.sample_inputs(120, seed=1, size=16)):
        with torch.no_grad():
            expected = model(*inputs)
        actual, path = cm.run(*inputs, return_path=True)
        assert compare(expected, actual) is None, f"input {i}: {compare(expected, actual)}"
        policies.setdefault(blockdrop.policy_key(expected), path)
    assert len(policies) >= 10, f"only {len(policies)} policies covered"
    assert len({sum(k) for k in policies}) >= 4  # from few to many blocks run


class DataRead(nn.Module):
    """`.data` read: a dtype from it, a max over it, a one-hot built on its clone."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        h = self.fc(x.type_as(x.data))
        _, idx = h.data.max(1)
        onehot = h.data.clone().zero_().scatter_(1, idx[:, None], 1.0)
        if h.data[0, 0] > 0:
            return h * onehot, idx
        return h - onehot, idx

    def arm(self, x):
        return bool(self.fc(x)[0, 0] > 0)


class DataWrite(nn.Module):
    """`.data` written: assigned a new value, and updated in place through the alias."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        out = self.fc(x)
        out.data = out.data * (out > 0).float()
        out.data.mul_(2.0)
        if out.sum() > 1.0:
            out.data = out.data + x
        return out

    def arm(self, x):
        return bool((self.fc(x).relu() * 2).sum() > 1.0)


class Detach(nn.Module):
    """`.detach()`, `torch.detach()`, `detach_()` and an in-place update of a detached
    copy."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        d = h.detach().clone()
        d.add_(1.0)
        h.detach_()
        if torch.detach(h).mean() > 0.2:
            return h * 2, d
        return h.detach() - x, d

    def arm(self, x):
        return bool(self.fc(x).mean() > 0.2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [DataRead, DataWrite, Detach])
def test_alias_matches_eager(cls, backend):
    torch.manual_seed(0)
    model = cls().eval()
    inputs = randn_inputs((1, 6), 12, seed=3)
    cm = dycomp.compile(model, (inputs[0],), backend=backend)
    assert_matches_eager(model, inputs, cm=cm)
    with torch.no_grad():
        assert {model.arm(x) for x in inputs} == {False, True}, "both arms covered"


class TypeCast(nn.Module):
    """`x.type(dtype)` is a cast (it was answered from the example, a frozen copy)."""

    def forward(self, x):
        y = (x * 2).type(torch.float64)
        return y + 1, x.type()


@pytest.mark.parametrize("backend", BACKENDS)
def test_type_cast_matches_eager(backend):
    inputs = randn_inputs((1, 4), 5, seed=4)
    assert_matches_eager(TypeCast(), inputs, backend=backend)
