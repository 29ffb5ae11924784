"""`nn.GRUCell` on the ONNX backend: the exporter's nodes, run as written (issue #22).

dycomp once fused the cell's 14 nodes into one ONNX `GRU` step; ONNX Runtime's `GRU`
kernel does not propagate NaN (a NaN input gave a finite state), so the fusion was
removed. These tests pin what replaced it: no `GRU` step where the model has a cell, and
the eager outputs, NaN and infinities included."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import dycomp
from dycomp.backends.onnx_backend import all_nodes
from examples.zoo import ZOO
from tests.helpers import assert_matches_eager, randn_inputs

SPECIALS = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0])


def _ops(cm) -> list:
    return [n.op_type for r in cm.graph.regions.values() for n in all_nodes(r.onnx.graph)]


def _non_finite(shape, n: int, seed: int = 0) -> list:
    """`n` seeded inputs, about a fifth of their values NaN, +-inf or +-0; one in four
    all finite."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, x in enumerate(randn_inputs(shape, n, seed)):
        mask = torch.rand(shape, generator=g) < (0.2 if i % 4 else 0.0)
        pick = SPECIALS[torch.randint(len(SPECIALS), shape, generator=g)]
        out.append(torch.where(mask, pick, x))
    return out


class Cells(nn.Module):
    """Two GRU steps in straight-line code, and a hand-written cell that mixes its gates
    the other way round (z picks the new state)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cell = nn.GRUCell(6, 8)
        self.ih, self.hh = nn.Linear(6, 24), nn.Linear(8, 24)

    def forward(self, x):
        h = self.cell(x)
        h = self.cell(x * 2.0, h)
        i_r, i_z, i_n = self.ih(x).chunk(3, 1)
        h_r, h_z, h_n = self.hh(h).chunk(3, 1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return z * n + (1 - z) * h


def test_gru_cells_match_eager_on_non_finite_inputs():
    """NaN where eager has NaN, infinities where it has them (a fused `GRU` step gave a
    finite state for a NaN input)."""
    model = Cells().eval()
    xs = _non_finite((2, 6), 60)
    cm = dycomp.compile(model, (xs[0],), backend="onnx")
    assert "GRU" not in _ops(cm) and _ops(cm).count("Tanh") == 3
    outs: list = []
    assert_matches_eager(model, xs, cm=cm, outputs=outs)
    assert any(o.isnan().any() for o in outs) and any(o.isfinite().all() for o in outs)


@pytest.mark.parametrize("name", ["decoder", "act"])
def test_loop_bodies_run_the_exported_cell(name):
    mod = ZOO[name]
    model, example = mod.make()
    cm = dycomp.compile(model, example, backend="onnx")
    (loop,) = (n for r in cm.graph.regions.values() for n in all_nodes(r.onnx.graph)
               if n.op_type == "Loop")
    body = [n.op_type for n in onnx.helper.get_node_attr_value(loop, "body").node]
    assert "GRU" not in body and body.count("Tanh") == 1, body
    assert_matches_eager(model, mod.sample_inputs(40), cm=cm)
