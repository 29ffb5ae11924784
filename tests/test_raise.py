"""`assert`, `raise` and `try`/`except` on data-dependent paths: the compiled model raises
the same exception type and message as eager on the inputs where eager raises, returns
the same outputs elsewhere (1,000 inputs each, backends torch and onnx), and an exception
caught by the model's own `try` (an early exit delivered by `raise`) is traced into its
handler."""

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
from dycomp.check import compare
from tests.raise_models import Checks, EarlyExit, Exit

N = 1000


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(N):
        x = torch.randn(1, 4, generator=g) * (0.5 + i % 3)
        if i % 17 == 0:
            x[0, i % 4] = float("nan")
        out.append(x)
    return out


def _outcome(fn, x):
    try:
        with torch.no_grad():
            return "ok", fn(x)
    except Exception as e:
        return type(e), str(e)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_assert_and_raise_match_eager(backend):
    torch.manual_seed(0)
    m = Checks()
    cm = dycomp.compile(m, (torch.zeros(1, 4),), backend=backend)
    seen = set()
    for x in _inputs(1):
        e, c = _outcome(m, x), _outcome(cm, x)
        seen.add(e[0])
        if e[0] == "ok":
            assert c[0] == "ok" and compare(e[1], c[1]) is None, (e, c)
        else:
            assert c == e
    assert seen == {"ok", AssertionError, ValueError, Exit}


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_caught_early_exit_matches_eager(backend):
    torch.manual_seed(0)
    m = EarlyExit().eval()
    cm = dycomp.compile(m, (torch.zeros(1, 4),), backend=backend)
    layers = set()
    for x in _inputs(2):
        x = torch.nan_to_num(x)
        with torch.no_grad():
            expected = m(x)
        layers.add(expected[1])
        assert compare(expected, cm(x)) is None
    assert len(layers) >= 3, layers


def test_runtime_raises_without_torch(tmp_path):
    m = Checks()
    cm = dycomp.compile(m, (torch.zeros(1, 4),), backend="onnx")
    rt = dycomp.runtime.load(cm.save(tmp_path / "checks.dyc"))
    with pytest.raises(AssertionError, match="input out of range"):
        rt.run(np.full((1, 4), 3.0, np.float32))
    with pytest.raises(ValueError, match="NaN in the input"):
        rt.run(np.array([[np.nan, 0, 0, 0]], np.float32))
    with pytest.raises(dycomp.runtime.ModelError, match="Exit") as info:
        rt.run(np.full((1, 4), 1.0, np.float32))
    assert info.value.qualname == "Exit" and info.value.exc_args == (None, "too large")
    assert np.allclose(rt.run(np.full((1, 4), 0.1, np.float32)), 0.2)


class Unconditional(nn.Module):
    def forward(self, x):
        raise ValueError("never compiles")


def test_unconditional_raise_raises_at_compile():
    with pytest.raises(ValueError, match="never compiles"):
        dycomp.compile(Unconditional(), (torch.zeros(2),))


class DataMessage(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            raise ValueError(x)
        return x


def test_raise_with_tensor_argument_is_unsupported():
    with pytest.raises(dycomp.UnsupportedError, match="data-dependent or non-literal"):
        dycomp.compile(DataMessage(), (torch.zeros(2),))


class Finally(nn.Module):
    def forward(self, x):
        try:
            if x.sum() > 0:
                raise ValueError("positive")
            y = x
        finally:
            y = x * 2
        return y


def test_raise_through_finally_is_unsupported():
    with pytest.raises(dycomp.UnsupportedError, match="finally"):
        dycomp.compile(Finally(), (torch.zeros(2),))


class StaticTry(nn.Module):
    def forward(self, x):
        try:
            scale = int("x")
        except ValueError:
            scale = 3
        else:
            scale = 4
        return x * scale


def test_static_try_runs_as_python():
    cm = dycomp.compile(StaticTry(), (torch.ones(2),))
    assert torch.equal(cm(torch.ones(2)), torch.full((2,), 3.0))
