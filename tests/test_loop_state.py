"""State a data-dependent loop carries through objects its body's callees change: an
attribute set inside a called module (`self.hidden = h`), a list held by a plain object
appended in a callee (`memory.hidden.append(h)`, `del memory.hidden[:]`), as in GFNet's
focus loop. Compared with eager PyTorch on every trip count, backends torch and onnx."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dycomp
from tests.helpers import assert_matches_eager

BACKENDS = ["torch", "onnx"]


class Memory:
    def __init__(self):
        self.hidden = []


class Cell(nn.Module):
    """Keeps its state in an attribute, as GFNet's `Full_layer.hidden`."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.hidden = None

    def forward(self, x, restart=False):
        if restart:
            self.hidden = torch.tanh(self.fc(x))
        else:
            self.hidden = torch.tanh(self.fc(x) + self.hidden)
        return self.hidden.sum()


class Policy(nn.Module):
    """Reads and appends to `memory.hidden`, as GFNet's `ActorCritic.act`."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRUCell(4, 4)

    def act(self, x, memory, restart=False):
        if restart:
            del memory.hidden[:]
            memory.hidden.append(torch.zeros(1, 4))
        h = self.gru(x, memory.hidden[-1])
        memory.hidden.append(h)
        return h


class CalleeState(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell, self.policy = Cell(), Policy()

    def forward(self, x):
        memory = Memory()
        s = self.cell(x, restart=True)
        a = self.policy.act(x, memory, restart=True)
        steps = 0
        while steps < 5 and s < 1.0:
            a = self.policy.act(a, memory)
            s = self.cell(a)
            steps += 1
        return self.cell.hidden, torch.stack(memory.hidden).sum(0), steps


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_set_in_callees_is_loop_carried(backend):
    torch.manual_seed(0)
    m = CalleeState().eval()
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 4, generator=g) + s for s in (0, 1, -1, 0.5, 2, -2, 0.2, 1.5)]
    with torch.no_grad():
        steps = {m(x)[2] for x in xs}
    assert len(steps) >= 3 and 5 in steps
    m.cell.hidden = None
    cm = dycomp.compile(m, (xs[0],), backend=backend, check=False)
    assert m.cell.hidden is None  # capture puts the model's state back
    assert_matches_eager(m, xs, cm=cm)


class LocalList(nn.Module):
    """A list held by a local variable, appended by a callee in a data-dependent loop: the
    local cannot be rebound to a loop-carried value, so it is refused."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def log(self, out, y):
        out.append(y)

    def forward(self, x):
        out = []
        while x.sum() < 3:
            x = self.fc(x).abs() + 0.5
            self.log(out, x)
        return x, len(out)


def test_local_list_changed_by_callee_raises():
    with pytest.raises(dycomp.UnsupportedError, match="held by a local variable"):
        dycomp.compile(LocalList(), (torch.randn(1, 4),), check=False)


class SliceDelete(nn.Module):
    """`del memory.hidden[:]` on a carried host list, in a branch on the loop counter."""

    def __init__(self):
        super().__init__()
        self.policy = Policy()

    def forward(self, x):
        memory = Memory()
        a = x
        for step in range(1, 5):
            a = self.policy.act(a, memory, restart=step == 1)
            if a.sum() > 0.5:
                return a, step, len(memory.hidden)
        return a, 4, len(memory.hidden)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slice_delete_on_carried_list(backend):
    torch.manual_seed(0)
    m = SliceDelete().eval()
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(1, 4, generator=g) * 2 for _ in range(10)]
    with torch.no_grad():
        assert len({m(x)[1] for x in xs}) >= 2
    assert_matches_eager(m, xs, backend=backend)
