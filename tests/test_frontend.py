"""Frontend: each DESIGN.md "what it must handle" item, compiled unchanged and compared
with eager PyTorch on many inputs covering every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dycomp
from tests.helpers import assert_matches_eager, randn_inputs

torch.manual_seed(0)


def lin(i=8, o=8):
    return nn.Linear(i, o)


# -- 1. if/elif/else on tensor values, re-joining --------------------------------------------
class IfElif(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = lin(), lin(), lin()

    def forward(self, x):
        s = x.sum()
        if s > 1.0:
            y = self.a(x)
        elif s < -1.0:
            y = self.b(x)
        else:
            y = self.c(x) * 2
        return torch.tanh(y) + x


def test_if_elif_else_rejoin():
    m = IfElif().eval()
    cm, paths = assert_matches_eager(m, randn_inputs((1, 8), 60), optimize=False)
    assert len(set(paths)) == 3
    assert cm.graph.stats()["branches"] == 2


# -- 2. early return inside a loop over a ModuleList, mixed tuple outputs ----------------------
class MultiExit(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([lin() for _ in range(3)])
        self.heads = nn.ModuleList([lin(8, 3) for _ in range(3)])

    def forward(self, x):
        for i, (blk, head) in enumerate(zip(self.blocks, self.heads)):
            x = torch.relu(blk(x))
            out = head(x)
            if F.softmax(out, -1).max() > 0.45:
                return out, i, True, None
        return out, i, False, None


def test_early_return_in_module_loop():
    cm, paths = assert_matches_eager(MultiExit().eval(), randn_inputs((1, 8), 80, scales=(
        0.5, 2.0, 8.0)))
    assert len(set(paths)) >= 2
    assert cm.graph.stats()["loops"] == 0  # container loops are unrolled (static Python)


# -- 3. data-dependent while / for-break, trip counts from tensors -----------------------------
class Loops(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = lin()

    def forward(self, x):
        steps = 0
        while x.norm() < 4.0 and steps < 20:
            x = x * 1.5 + 0.1
            steps += 1
        for _ in range(int(x.abs().sum().item()) % 5):
            x = torch.tanh(self.cell(x))
        total = torch.zeros(1)
        for _ in range(10):
            total = total + x.sum()
            if total.item() > 2.0:
                break
        return x, steps, total


def test_data_dependent_loops_traced_once():
    cm, paths = assert_matches_eager(Loops().eval(), randn_inputs((1, 8), 60))
    assert len({len(p) for p in paths}) > 3  # trip counts vary
    assert cm.graph.stats()["loops"] == 3
    assert len(cm.graph.regions) <= 8  # bodies traced once, not unrolled


# -- 4. gates inside submodules at any depth, methods other than forward ----------------------
class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.g, self.f = lin(8, 1), lin()

    def forward(self, x):
        if torch.sigmoid(self.g(x)) > 0.5:
            return self.inner(x)
        return x

    def inner(self, x):
        y = self.f(x)
        if y.mean() > 0:
            y = y * 0.5
        return x + torch.relu(y)


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(Gate(), Gate())
        self.threshold = 0.0

    def early_exit(self, x):
        x = self.stages(x)
        if x.sum() > self.threshold:
            return x
        return -x


def test_control_flow_in_submodules_and_other_methods():
    m = Deep().eval()
    _, paths = assert_matches_eager(m.early_exit, randn_inputs((1, 8), 80), optimize=False)
    assert len(set(paths)) >= 6
    cm = dycomp.compile(m, (torch.randn(1, 8),), method="early_exit")
    assert cm.graph.name == "early_exit"


def test_driver_sets_forward_and_threshold():
    """DESIGN 13: the driver swaps forward and sets attributes after construction."""
    m = Deep().eval()
    m.forward = m.early_exit
    m.threshold = 1.5
    cm, _ = assert_matches_eager(m, randn_inputs((1, 8), 40))
    assert "1.5" in cm.host_source or len(cm.graph.regions) > 0


# -- 5. item/bool/int/float, comparisons, data-dependent indexing -----------------------------
class Select(nn.Module):
    def __init__(self):
        super().__init__()
        self.router = lin(8, 3)
        self.experts = nn.ModuleList([lin() for _ in range(3)])
        self.scales = [0.5, 1.0, 2.0]

    def forward(self, x):
        idx = int(torch.argmax(self.router(x), -1).item())
        y = self.experts[idx](x) * self.scales[idx]
        flag = bool(y.sum() > 0)
        v = float(y.mean())
        if flag and v > 0.1:
            return y, idx, v > 0.2
        return -y, idx, False


def test_item_bool_int_float_and_selection():
    cm, paths = assert_matches_eager(Select().eval(), randn_inputs((1, 8), 90))
    assert len(set(paths)) >= 4
    assert len(cm.graph.regions) <= 8  # one region per expert, not per path


# -- 6. host-side python / numpy -----------------------------------------------------------------
class HostLogic(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([lin(8, 4) for _ in range(3)])

    def forward(self, x):
        confs, outs, count = [], [], 0
        for head in self.heads:
            out = head(x)
            confs.append(F.softmax(out, -1).max().item())
            outs.append(out)
            count += 1
        best = int(np.argmax(confs))
        return outs[best], best, count


def test_host_numpy_on_tensor_values():
    _, paths = assert_matches_eager(HostLogic().eval(), randn_inputs((1, 8), 60))


# -- 7. static python: config, training, isinstance, None, closures, kwargs, dict outputs ------
def make_scaler(k):
    def scale(t):
        return t * k
    return scale


class StaticPython(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = lin()
        self.cfg = {"residual": True, "depth": 2}
        self.scale = make_scaler(0.5)
        self.forward = self.run_it

    def run_it(self, x, bias=None, *, mode="a"):
        for _ in range(self.cfg["depth"]):
            x = self.proj(x)
        if self.training:
            x = x * 0
        if bias is not None:
            x = x + bias
        if isinstance(x, torch.Tensor) and mode == "a":
            x = self.scale(x)
        out = {"y": x, "pos": x.sum() > 0, "n": 3, "none": None}
        if x.sum() > 0:
            out["sign"] = 1
        else:
            out["sign"] = -1
        return out


def test_static_python_resolved_at_compile_time():
    m = StaticPython().eval()
    xs = randn_inputs((1, 8), 30)
    b = torch.ones(1, 8)
    cm = dycomp.compile(m, (xs[0],), example_kwargs={"bias": b, "mode": "a"})
    for x in xs:
        got, exp = cm(x, bias=b, mode="a"), m(x, bias=b, mode="a")
        assert torch.allclose(got["y"], exp["y"], atol=1e-5)
        assert got["sign"] == exp["sign"] and got["n"] == 3 and got["none"] is None
    with pytest.raises(ValueError, match="compiled for"):
        cm(xs[0], bias=b, mode="b")


# -- 8. n independent gates -> O(n) regions; identical regions compiled once -------------------
class Shared(nn.Module):
    def __init__(self, n=12):
        super().__init__()
        self.block = lin()
        self.n = n

    def forward(self, x):
        for _ in range(self.n):
            if x[0, 0] > 0:
                x = torch.tanh(self.block(x))
            else:
                x = x.flip(-1)
        return x


def test_independent_gates_linear_and_dedup():
    cm, paths = assert_matches_eager(Shared().eval(), randn_inputs((1, 8), 40), optimize=False)
    s = cm.graph.stats()
    assert s["branches"] == 12
    assert len(cm.graph.regions) <= 4  # the same block at each step is one region
    assert len(set(paths)) >= 5


# -- 9. loop-carried values that grow per iteration ------------------------------------------
class Grow(nn.Module):
    def __init__(self):
        super().__init__()
        self.step = lin(8, 1)

    def forward(self, x):
        seq = x[:, :1]
        while seq.size(1) < 12 and seq[0, -1] < 1.5:
            nxt = torch.sigmoid(self.step(x)) + seq[:, -1:] * 0.9 + 0.1
            seq = torch.cat([seq, nxt], 1)
        return seq, seq.size(1)


def test_growing_loop_carried_tensor():
    cm, paths = assert_matches_eager(Grow().eval(), randn_inputs((1, 8), 40))
    assert len({len(p) for p in paths}) > 3
    assert cm.graph.stats()["loops"] == 1


# -- 10. module state updated in forward, in-place and masked assignment, size-driven reshape --
class State(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRUCell(8, 8)
        self.saved = []

    def forward(self, x):
        self.hidden = torch.zeros(x.size(0), 8)
        self.saved = []
        out = x.clone()
        for _ in range(3):
            self.hidden = self.rnn(x, self.hidden)
            p = torch.sigmoid(self.hidden)
            p[p < 0.5] = 0.0
            self.saved.append(p)
            if p.sum() > 2.0:
                out += self.hidden
            out = F.relu(out, inplace=True)
        return out.view(x.size(0), -1), len(self.saved)


def test_state_inplace_and_masked_assignment():
    m = State().eval()
    assert_matches_eager(m, randn_inputs((1, 8), 40))
    assert not isinstance(m.__dict__.get("hidden"), torch.Tensor) or not hasattr(
        m.hidden, "_node")  # capture restored the module's state


class ArmAppends(nn.Module):
    """Python containers changed in the arms of data-dependent branches (a method, `+=`,
    an item assignment), in an unrolled loop: each arm is traced on the containers as
    they were before the branch, never on what the other arm did to them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.f = lin()

    def forward(self, x):
        seen, hits, lows = [], set(), {}
        for i in range(3):
            x = torch.tanh(self.f(x))
            if x.sum() > 0:
                seen.append(int(x.argmax()))
                hits.add(i)
            else:
                seen += [-1]
                lows[i] = x.min().item()
            if x.mean() > 0.2:
                seen.append(x.max().item())
        return x, seen, len(hits), lows


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_containers_changed_in_branch_arms(backend):
    m = ArmAppends().eval()
    outs = []
    _, paths = assert_matches_eager(m, randn_inputs((1, 8), 40), backend=backend,
                                    outputs=outs)
    assert len(set(paths)) >= 4
    assert len({o[2] for o in outs}) >= 3 and any(-1 in o[1] for o in outs)
    assert len({len(o[3]) for o in outs}) >= 3


# -- 11. python built-ins over tensors in host logic -------------------------------------------
class Builtins(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer0, self.layer1, self.layer2 = lin(), lin(), lin()

    def forward(self, x):
        probs = torch.sigmoid(x[0, :4]).tolist()
        keep = [i for i, p in enumerate(probs) if p > 0.5]
        drop = set(range(4)) - set(keep)
        best = max([x[0, 0], x[0, 1], x[0, 2]])
        pos = probs.index(max(probs))
        y = x
        for i in range(3):
            y = getattr(self, f"layer{i}")(y)
        if isinstance(keep, list) and best > 0:
            y = y * 2
        return y, keep, sorted(drop), pos


def test_builtins_over_tensors():
    assert_matches_eager(Builtins().eval(), randn_inputs((1, 8), 50))


# -- 12. gating written as arithmetic ---------------------------------------------------------
class ArithGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.g, self.f = lin(8, 1), lin()

    def forward(self, x):
        m = (torch.sigmoid(self.g(x)) > 0.5).float()
        return m * torch.relu(self.f(x)) + (1 - m) * x


def test_arithmetic_gate_compiles_as_is():
    cm, _ = assert_matches_eager(ArithGate().eval(), randn_inputs((1, 8), 30))
    assert len(cm.graph.regions) == 1


# -- recursion and a ternary on tensors --------------------------------------------------------
class Recur(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = lin()

    def forward(self, x, depth: int = 0):
        y = torch.tanh(self.f(x)) if x.mean() > 0 else x * 0.5
        if depth < 3:
            return self.forward(y, depth + 1)
        return y


def test_static_recursion_and_ifexp():
    assert_matches_eager(Recur().eval(), randn_inputs((1, 8), 30))


class DataRecursion(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return self.forward(x - 1.0)
        return x


def test_data_dependent_recursion_is_refused():
    with pytest.raises(dycomp.UnsupportedError, match="recursion"):
        dycomp.compile(DataRecursion(), (torch.randn(1, 4),))
