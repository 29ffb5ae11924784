"""Cheap control flow: host branches lowered into ONNX `If` nodes (backend onnx)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dycomp
from dycomp.check import compare
from examples.zoo import ZOO


def _if_nodes(model) -> int:
    return sum(n.op_type == "If" for n in model.graph.node)


@pytest.fixture(scope="module")
def gated54():
    model, example = ZOO["gated54"].make()
    return model, dycomp.compile(model, example, backend="onnx")


def test_gated_network_becomes_one_subgraph(gated54):
    model, cm = gated54
    assert len(cm.graph.regions) == 1
    (region,) = cm.graph.regions.values()
    assert _if_nodes(region.onnx) == 54
    assert "bool(" not in cm.host_source  # no host decision left
    for inputs in ZOO["gated54"].sample_inputs(60):
        with torch.no_grad():
            expected = model(*inputs)
        assert compare(expected, cm(*inputs)) is None


def test_early_exits_keep_host_dispatch():
    model, example = ZOO["multi_exit"].make()
    cm = dycomp.compile(model, example, backend="onnx")
    assert len(cm.graph.regions) > 1 and "if v" in cm.host_source


class IntBranch(nn.Module):
    """A branch whose result leaves as a Python int must stay on the host."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            y, k = self.f(x), 1
        else:
            y, k = self.f(-x), 0
        return torch.relu(self.f(y)), k


def test_branch_with_python_values_is_not_fused():
    m = IntBranch().eval()
    cm = dycomp.compile(m, (torch.randn(1, 4),), backend="onnx")
    assert "if v" in cm.host_source
    for s in (1.0, -1.0):
        x = torch.ones(1, 4) * s
        assert compare(m(x), cm(x)) is None
