"""No exported ONNX region holds a traced value as a constant.

Walks every region exported while compiling each zoo example and this topic's models,
and compares every initializer and `Constant` with the example values of the region's
traced tensors (`dycomp.backends.frozen_values`); the check fires on a frozen value.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch import fx

import dycomp
from dycomp.backends import onnx_backend
from dycomp.backends.frozen_values import constants, fingerprint, traced_values
from dycomp.ir.dyngraph import Region
from examples import blockdrop
from examples.zoo import ZOO
from tests.helpers import assert_matches_eager, randn_inputs
from tests.test_data_alias import DataRead, DataWrite, Detach


class TensorOfTraced(nn.Module):
    """`torch.tensor(h)` / `torch.as_tensor(h, dtype=...)` of traced values and of a host
    scalar."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        c = torch.tensor(h) * 2
        d = torch.as_tensor(h, dtype=torch.float64)
        s = torch.tensor(h.sum().item())  # a host scalar
        return c + x + s, d.sum()


@pytest.mark.filterwarnings("ignore:To copy construct")  # eager's own warning
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_tensor_of_a_traced_value_matches_eager(backend):
    torch.manual_seed(0)
    model = TensorOfTraced().eval()
    inputs = randn_inputs((1, 6), 6, seed=2)
    assert_matches_eager(model, inputs, cm=dycomp.compile(model, (inputs[0],), backend=backend))


_LIB: dict = {}  # code dycomp does not convert (not a user file): its torch.tensor copies
exec(compile("import torch\ndef copy(t):\n    return torch.tensor(t)\n", "<lib>", "exec"),
     _LIB)


class CopiedInLibrary(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x)
        return _LIB["copy"](h) + x


@pytest.mark.filterwarnings("ignore:To copy construct")
def test_capture_check_fires_on_a_copied_example_value():
    with pytest.raises(dycomp.UnsupportedError, match=r"region r0 holds the example value of "
                                                      r"`fc` .*torch.tensor"):
        dycomp.compile(CopiedInLibrary(), (torch.randn(1, 6),), backend="torch")


def _models():
    for name, mod in ZOO.items():
        yield name, mod.make
    yield "blockdrop", lambda: blockdrop.make(blocks=2, widths=(4, 8, 8), size=16)
    for cls in (DataRead, DataWrite, Detach, TensorOfTraced):
        yield cls.__name__, lambda cls=cls: (cls().eval(), (torch.randn(1, 6),))


@pytest.mark.parametrize("name,make", list(_models()), ids=[n for n, _ in _models()])
def test_exported_regions_hold_no_traced_value(name, make, monkeypatch):
    exported = []
    monkeypatch.setattr(onnx_backend, "check_region",
                        lambda region, model: exported.append((region.gm, model)))
    torch.manual_seed(0)
    model, example = make()
    dycomp.compile(model, example, backend="onnx", check=False)
    assert exported, "no region exported"
    compared = 0
    for gm, onnx_model in exported:
        traced, fixed = traced_values(gm)
        for const, value in constants(onnx_model):
            key = fingerprint(value)
            compared += key is not None
            assert key not in traced or key in fixed, (
                f"{name}: constant {const} is the example value of {traced[key]}")
    assert compared or name in ("DataRead", "DataWrite", "Detach", "TensorOfTraced")


class Frozen(nn.Module):
    """`.data` read as FX traces it: the TorchScript exporter makes it a constant."""

    def forward(self, x):
        p = torch.sigmoid(x)
        return p.data * 2.0


def _region(module, example):
    gm = fx.symbolic_trace(module)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            node.meta["example"] = example
        if node.op == "output":  # regions return a tuple
            node.args = ((node.args[0],),)
    gm.recompile()
    return Region("r0", gm, ["frozen.py:1"])


def test_check_fires_on_a_frozen_value():
    assert "getattr" in str(_region(Frozen(), torch.randn(2, 3)).gm.code)
    frozen = r"frozen.py:1: .*holds the example value of `mul`"
    with pytest.raises(dycomp.UnsupportedError, match=frozen):
        onnx_backend.export_region_model(_region(Frozen(), torch.randn(2, 3)))


class AddWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 3))

    def forward(self, x):
        return x * 3.0 + self.w


def test_weight_equal_to_the_example_is_not_frozen():
    model = AddWeight()
    x = model.w.detach().clone()  # the example input is the weight's value
    onnx_backend.export_region_model(_region(model, x))  # no error: the weight is the FX's
    cm = dycomp.compile(model, (x,), backend="onnx")
    other = torch.randn(2, 3)
    torch.testing.assert_close(cm(other), model(other).detach())


class SignalTypeAs(nn.Module):
    """Universal Transformer's ACT step: a plain tensor attribute (not a buffer) sliced and
    cast `type_as(inputs.data)` in a halting loop. The cast's value does not depend on the
    input: a constant equal to it is not a frozen traced value."""

    def __init__(self):
        super().__init__()
        self.signal = torch.randn(1, 8, 4)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        state, steps = x, 0
        while steps < 4 and state.sum() < 3.0:
            state = torch.tanh(self.fc(state + self.signal[:, :x.shape[1], :].type_as(x.data)))
            steps += 1
        return state, steps


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_type_as_of_a_constant_is_not_frozen(backend):
    torch.manual_seed(0)
    model = SignalTypeAs().eval()
    inputs = randn_inputs((1, 5, 4), 12, seed=3)
    assert_matches_eager(model, inputs, cm=dycomp.compile(model, (inputs[0],), backend=backend))
