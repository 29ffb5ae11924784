"""Constructs of the corpus models ConvNet-AIG, Universal Transformer (ACT) and
mixture-of-experts, as small models of our own (CI cannot fetch the repositories):
`.data` and legacy `Variable(t)` in a hard Gumbel gate, `torch.split` with sizes read
from a tensor (`.tolist()`), `index_add` with repeated indices, operators torch writes
in Python (`x ** 2`, `1 - x`), and an ACT halting loop. Each is compared with eager
on every path, on the torch and onnx backends."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Variable

from tests.helpers import assert_matches_eager, randn_inputs

BACKENDS = ["torch", "onnx"]


class HardGate(nn.Module):
    """ConvNet-AIG's block: a gate from the input, made hard with `.data` (noise off)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 2, 1)

    def hard(self, logits):
        y = F.softmax(logits, 1)
        _, idx = y.data.max(1, keepdim=True)
        y_hard = logits.data.clone().zero_().scatter_(1, idx, 1)
        return Variable(y_hard - y.data) + y

    def forward(self, x):
        w = self.hard(self.fc(F.avg_pool2d(x, x.size(2))))
        out = x + F.relu(self.conv(x)) * w[:, 1].unsqueeze(1)
        return out, w[:, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_gate_with_data_reads(backend):
    torch.manual_seed(0)
    m = HardGate().eval()
    with torch.no_grad():
        m.fc.bias.zero_()
        m.fc.weight.mul_(4)
    xs = randn_inputs((1, 4, 6, 6), 16, seed=1)
    outs = []
    assert_matches_eager(m, xs, backend=backend, outputs=outs)
    gates = {round(float(g), 3) for _, g in outs}
    assert gates == {0.0, 1.0}  # both the open and the closed gate, exactly 0 / 1


class TinyMoE(nn.Module):
    """davidmrau/mixture-of-experts' dispatch and combine, with its data-dependent shapes."""

    def __init__(self, d=8, n=4, k=2):
        super().__init__()
        self.k = k
        self.gate = nn.Linear(d, n)
        self.experts = nn.ModuleList([nn.Linear(d, 3) for _ in range(n)])

    def forward(self, x):
        logits = self.gate(x).softmax(1)
        top, idx = logits.topk(self.k, dim=1)
        gates = torch.zeros_like(logits).scatter(1, idx, top)
        nz = torch.nonzero(gates)
        sorted_experts, order = nz.sort(0)
        _, expert_index = sorted_experts.split(1, dim=1)
        batch_index = nz[order[:, 1], 0]
        sizes = (gates > 0).sum(0).tolist()
        nonzero_gates = torch.gather(gates[batch_index.flatten()], 1, expert_index)
        pieces = torch.split(x[batch_index].squeeze(1), sizes, dim=0)
        outs = [self.experts[i](pieces[i]) for i in range(len(self.experts))]
        stitched = torch.cat(outs, 0).mul(nonzero_gates)
        zeros = torch.zeros(gates.size(0), outs[-1].size(1))
        load = (gates > 0).sum(0)
        return zeros.index_add(0, batch_index, stitched), load.float().var() / (
            load.float().mean() ** 2 + 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 5])
def test_moe_split_sizes_from_tensor(backend, batch):
    torch.manual_seed(0)
    m = TinyMoE().eval()
    xs = randn_inputs((batch, 8), 16, seed=2)
    cm, _ = assert_matches_eager(m, xs, backend=backend)
    routes = {tuple(map(tuple, m.gate(x).topk(2, 1)[1].sort(1)[0].tolist())) for x in xs}
    assert len(routes) > 2  # several expert sets (row counts per expert vary)
    assert len(cm.graph.regions) <= 3  # one compiled graph, not one per split


def test_index_add_repeated_indices_on_onnx():
    class M(nn.Module):
        def forward(self, x, idx):
            return torch.zeros(3, 4).index_add(0, idx, x), 1 - x ** 2

    idx = torch.tensor([0, 2, 0, 0, 1])
    xs = [(x, idx) for x in randn_inputs((5, 4), 4, seed=3)]
    assert_matches_eager(M(), xs, backend="onnx")


def _cpu(self, *args, **kwargs):
    return self


class ACT(nn.Module):
    """Universal Transformer's ACT loop: `while (...).byte().any()`, `type_as(x.data)`."""

    def __init__(self, h=8, max_hop=5):
        super().__init__()
        self.p = nn.Linear(h, 1)
        self.fn = nn.Linear(h, h)
        self.max_hop, self.threshold = max_hop, 0.9
        self.pos = torch.randn(1, max_hop, h)

    def forward(self, inputs):
        state = inputs
        halting = torch.zeros(inputs.shape[0], inputs.shape[1])
        remainders = torch.zeros(inputs.shape[0], inputs.shape[1])
        n_updates = torch.zeros(inputs.shape[0], inputs.shape[1])
        previous = torch.zeros_like(inputs)
        step = 0
        while ((halting < self.threshold) & (n_updates < self.max_hop)).byte().any():
            state = state + self.pos[:, step, :].unsqueeze(1).repeat(
                1, inputs.shape[1], 1).type_as(inputs.data)
            p = torch.sigmoid(self.p(state)).squeeze(-1)
            still = (halting < 1.0).float()
            new_halted = (halting + p * still > self.threshold).float() * still
            still = (halting + p * still <= self.threshold).float() * still
            halting = halting + p * still
            remainders = remainders + new_halted * (1 - halting)
            halting = halting + new_halted * remainders
            n_updates = n_updates + still + new_halted
            w = p * still + new_halted * remainders
            state = torch.tanh(self.fn(state))
            previous = state * w.unsqueeze(-1) + previous * (1 - w.unsqueeze(-1))
            step += 1
        return previous, (remainders, n_updates)


@pytest.mark.parametrize("backend", BACKENDS)
def test_act_halting_loop(backend):
    torch.manual_seed(0)
    m = ACT().eval()
    xs = randn_inputs((1, 3, 8), 12, seed=4, scales=(0.5, 2.0, 4.0))
    outs = []
    assert_matches_eager(m, xs, backend=backend, outputs=outs)
    assert len({int(n.max()) for _, (_, n) in outs}) >= 2  # different numbers of steps
