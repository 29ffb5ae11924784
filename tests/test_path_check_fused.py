"""The path check forces the decisions inside fused ONNX models (`dycomp/check_fused.py`):
the `If` arms and `Loop` exits that run are the shipped ones, so a fault in an arm no
natural input takes is named by its source line."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import dycomp
from dycomp.check_paths import path_check
from dycomp.errors import MismatchError
from dycomp.runtime.onnx_paths import drop_path

FUSED = "fused ONNX model"


class NestedRare(nn.Module):
    """Nested ifs fused into `If` nodes (arms over 2048 weights: not speculated); the
    outer `if` arm needs a sum no input reaches."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(8, 48), nn.Linear(48, 48), nn.Linear(48, 48)
        self.d = nn.Linear(48, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 1e4:
            h = torch.relu(self.b(h))  # the rare arm
        else:
            if h.mean() > 0:
                h = self.c(h) * 2.0
            else:
                h = self.c(h) - 1.0
        return self.d(h)


class Halting(nn.Module):
    """A loop with an exit no input takes (tanh sums stay under 48), fused into `Loop`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(8, 48), nn.Linear(48, 48), nn.Linear(48, 4)

    def forward(self, x):
        h = self.a(x)
        for _ in range(4):
            h = torch.tanh(self.b(h))
            if h.sum() > 100.0:
                break
        return self.c(h)


def _site(cls, text: str) -> str:
    lines, start = inspect.getsourcelines(cls.forward)
    return f"test_path_check_fused.py:{start + next(i for i, s in enumerate(lines) if text in s)}"


def _compile(cls):
    x = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    model = cls().eval()
    return model, x, dycomp.compile(model, (x,), backend="onnx", optimize=False)


def _fused(cm):
    (name,) = [n for n, r in cm.graph.regions.items() if r.traced is not None]
    return cm.graph.regions[name]


def test_nested_fused_ifs_fully_covered():
    model, x, cm = _compile(NestedRare)
    report = cm.check
    assert any(n.op_type == "If" for n in _fused(cm).traced.graph.node)
    assert FUSED in report.target, report.summary()
    assert report.full and len(report.arms) == 4 and report.forced_runs >= 1, report.summary()
    assert report.regions_run == report.regions
    outer = _site(NestedRare, "1e4")
    assert {(outer, 0, True), (outer, 0, False)} <= report.checked


def _corrupt_rare_arm(region) -> None:
    """The rare arm's `Relu` made a `Sigmoid`, in the fused model as shipped."""
    def visit(g) -> bool:
        for n in g.node:
            if n.op_type == "Relu":
                n.op_type = "Sigmoid"
                return True
            if any(visit(a.g) for a in n.attribute if a.type == a.GRAPH):
                return True
        return False

    assert visit(region.traced.graph)
    region.onnx = drop_path(region.traced)


def test_corrupted_arm_inside_fused_if_is_named():
    model, x, cm = _compile(NestedRare)
    _corrupt_rare_arm(_fused(cm))
    with pytest.raises(MismatchError) as e:
        path_check(model.forward, cm, (x,), {})
    assert f"true arm of the decision at {_site(NestedRare, '1e4')}" in str(e.value), e.value


def test_fused_loop_exit_forced_at_every_trip():
    """The exit is forced at each iteration: the loop runs 1, 2, 3 and 4 trips."""
    model, x, cm = _compile(Halting)
    assert any(n.op_type == "Loop" for n in _fused(cm).traced.graph.node)
    report = cm.check
    site = _site(Halting, "100.0")
    assert FUSED in report.target and report.full, report.summary()
    assert report.checked == {(site, k, v) for k in range(4) for v in (True, False)}


class Speculated(nn.Module):
    """Small arms (under 2048 weights) are both computed and selected (`Where`): the inner
    decision runs in the fused model whichever arm is taken, but counts only where the
    outer decision takes its arm."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 50.0:
            g = self.b(h)
            if g.mean() > 0:
                k = 1
            else:
                k = 2
        else:
            g = self.c(h)
            k = 3
        return g, k


def _forced_fused_run(cm, x, plan: dict) -> list:
    """The decisions the fused program read, answered by `plan` ((site, k) -> bool)."""
    from dycomp.check_forcing import Forcer, forced_source
    from dycomp.check_fused import ForcingExecutor, marked_fusion
    from dycomp.runtime.host import HostProgram

    source, models, ran = marked_fusion(cm)
    executor = ForcingExecutor(cm.executor, models, ran)
    executor.program = HostProgram(forced_source(source), executor)
    forcer = Forcer(plan)
    executor.program.fn.__globals__["_F"] = forcer
    executor.program.run_path(x.numpy())
    return forcer.taken


def test_speculated_arm_decision_counts_only_where_taken():
    model, x, cm = _compile(Speculated)
    assert not any(n.op_type == "If" and "switch" not in n.name and len(n.output) > 1
                   for n in _fused(cm).traced.graph.node)  # the arms are selected
    outer, inner = _site(Speculated, "50.0"), _site(Speculated, "g.mean()")
    assert _forced_fused_run(cm, x, {}) == [(outer, 0, False)]
    assert _forced_fused_run(cm, x, {(outer, 0): True, (inner, 0): False}) == [
        (outer, 0, True), (inner, 0, False)]
    report = cm.check
    assert FUSED in report.target and report.full and len(report.arms) == 4, report.summary()


def test_moe_switch_arms_checked_by_natural_inputs():
    """moe's switch cases cannot be forced (eager indexes with the int; the regions also
    read the index tensor): listed with that reason, they are all taken by the natural
    inputs the check adds while such arms are left."""
    from examples.zoo import ZOO

    model, example = ZOO["moe"].make()
    cm = dycomp.compile(model, example, backend="onnx", check=False)
    few = path_check(model.forward, cm, example, {}, more=0)
    assert few.unchecked and all("switch index" in why for why in few.unchecked.values())
    report = path_check(model.forward, cm, example, {}, more=14)
    assert report.full and report.regions_run == report.regions, report.summary()
    assert "no arms to force" in report.target  # the shipped model gathers the switch


class LoopRare(nn.Module):
    """An `if` in a loop body fused into a `Loop` holding an `If`; its arm needs a sum no
    input reaches (tanh keeps each of the 48 values under 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(8, 48), nn.Linear(48, 48), nn.Linear(48, 48)
        self.d = nn.Linear(48, 4)

    def forward(self, x):
        h = self.a(x)
        for _ in range(3):
            h = torch.tanh(self.b(h))
            if h.sum() > 100.0:
                h = torch.relu(self.c(h))  # the rare arm
        return self.d(h)


def test_corrupted_arm_inside_fused_loop_is_named():
    model, x, cm = _compile(LoopRare)
    site = _site(LoopRare, "100.0")
    report = cm.check
    assert FUSED in report.target and report.full, report.summary()
    assert report.checked == {(site, k, v) for k in range(3) for v in (True, False)}
    _corrupt_rare_arm(_fused(cm))
    with pytest.raises(MismatchError) as e:
        path_check(model.forward, cm, (x,), {})
    assert f"true arm of the decision at {site} (occurrence #0)" in str(e.value), e.value


@pytest.mark.parametrize("name,site,trips", [("decoder", "decoder.py:72", 8),
                                             ("act", "act.py:52", 8)])
def test_zoo_loops_forced_in_the_fused_model(name, site, trips):
    """The zoo's fused decoding and halting loops: each exit forced at every trip, on
    the shipped fused model."""
    from examples.zoo import ZOO

    model, example = ZOO[name].make()
    report = dycomp.compile(model, example, backend="onnx").check
    assert FUSED in report.target and report.full, report.summary()
    assert {(s, k, v) for s, k, v in report.checked if s == site} == {
        (site, k, v) for k in range(trips) for v in (True, False)}
