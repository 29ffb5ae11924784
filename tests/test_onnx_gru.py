"""`nn.GRUCell` written as one ONNX `GRU` step (`dycomp.backends.onnx_gru`)."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

import dycomp
from dycomp.backends.onnx_backend import all_nodes
from examples.zoo import ZOO
from tests.helpers import assert_matches_eager, randn_inputs


def _ops(cm) -> list:
    return [n.op_type for r in cm.graph.regions.values() for n in all_nodes(r.onnx.graph)]


class Cells(nn.Module):
    """Two GRU steps in straight-line code, and a hand-written cell that mixes its gates
    the other way round (z picks the new state): only the `nn.GRUCell`s are fused."""

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


def test_gru_cells_become_gru_steps_and_other_cells_stay():
    model = Cells().eval()
    cm = dycomp.compile(model, (torch.randn(1, 6),), backend="onnx")
    ops = _ops(cm)
    assert ops.count("GRU") == 2 and ops.count("Tanh") == 1, ops  # the hand-written one
    assert_matches_eager(model, randn_inputs((1, 6), 20), cm=cm)


@pytest.mark.parametrize("name", ["decoder", "act"])
def test_loop_bodies_run_one_gru_step_per_iteration(name):
    mod = ZOO[name]
    model, example = mod.make()
    cm = dycomp.compile(model, example, backend="onnx")
    (loop,) = (n for r in cm.graph.regions.values() for n in all_nodes(r.onnx.graph)
               if n.op_type == "Loop")
    body = [n.op_type for n in onnx.helper.get_node_attr_value(loop, "body").node]
    assert body.count("GRU") == 1 and "Tanh" not in body, body
    # the state is carried as the step takes it (onnx_conditions.carry_unsqueezed); the
    # decoder's input, a new token each iteration, is reshaped for the step in the loop,
    # act's, the same every iteration, before it
    assert body.count("Unsqueeze") == (1 if name == "decoder" else 0), body
    assert_matches_eager(model, mod.sample_inputs(40), cm=cm)
