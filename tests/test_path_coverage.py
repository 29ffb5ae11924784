"""The path-covering self-check on the zoo (backends onnx and torch): every decision arm is checked,
or listed with the reason it could not be forced; scalar comparisons (`tok.item() ==
eos`, `halting.item() > t`) are forced in eager too, so loops run 0, 1 and more trips."""

from __future__ import annotations

import inspect

import pytest
import torch

import dycomp
from dycomp.check_paths import path_check
from dycomp.errors import MismatchError
from examples.zoo import ZOO

# arms not forceable, by design: moe's switch index is read out of a tensor that eager
# indexes with (and its regions use), so forcing the host's `index == k` alone would not
# force the expert; those arms are checked only when a natural input takes them
NOT_FORCEABLE = {"moe": "switch index"}


@pytest.fixture(scope="module")
def checked():
    cache = {}

    def get(name, backend="onnx"):
        if (name, backend) not in cache:
            model, example = ZOO[name].make()
            cache[name, backend] = dycomp.compile(model, example, backend=backend).check
        return cache[name, backend]

    return get


# torch: the examples with decisions of each kind (the gated ResNets, whose gates onnx
# covers, and static_resnet, without decisions, would add ~10 s of compiling)
CASES = [(name, "onnx") for name in ZOO] + [
    (name, "torch") for name in ("multi_exit", "policy_net", "moe", "decoder", "act",
                                 "nested_if")]


@pytest.mark.parametrize("name,backend", CASES)
def test_zoo_arms_checked_or_listed_with_reason(name, backend, checked):
    report = checked(name, backend)
    left = report.unchecked
    if name in NOT_FORCEABLE:
        assert all(NOT_FORCEABLE[name] in why for why in left.values()), left
    else:
        assert report.full and not left, report.summary()
    assert not report.unreachable, report.unreachable
    if report.full:
        assert report.regions_run == report.regions, report.summary()
    assert f"{len(report.checked)}/{len(report.arms)} decision arms checked" in \
        report.summary()


@pytest.mark.parametrize("name,site,trips", [("decoder", "decoder.py:72", 8),
                                             ("act", "act.py:52", 8)])
def test_scalar_decisions_forced_every_trip_count(name, site, trips, checked):
    """`tok.item() == eos` / `halting.item() > 1 - eps` forced both ways at every
    iteration: the loop ends after 1, 2, ... trips (and runs to its bound)."""
    report = checked(name)
    arms = {(s, k, v) for s, k, v in report.checked if s == site}
    assert arms == {(site, k, v) for k in range(trips) for v in (True, False)}, arms
    assert report.forced_runs >= trips - 1


def test_gates_in_one_greedy_run(checked):
    """gated54's 54 gate decisions: one forced run flips them all (greedy), not 54."""
    report = checked("gated54")
    assert report.full and len(report.arms) == 108
    assert report.forced_runs <= 3, report.summary()


class Halt(torch.nn.Module):
    """A loop that ends on a scalar read (`.item() > 5`) no input reaches: tanh <= 1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        for _ in range(3):
            h = torch.tanh(self.b(h))
            if h[0, 0].item() > 5.0:
                return h * 2.0  # the rare arm
        return h - 1.0


def _line(text: str) -> int:
    lines, start = inspect.getsourcelines(Halt.forward)
    return start + next(i for i, s in enumerate(lines) if text in s)


def test_corrupt_arm_behind_scalar_decision_is_named():
    """The arm after `h[0, 0].item() > 5.0` runs only forced; corrupted after lowering,
    the check names that decision's line, and each trip is a checked arm."""
    model, x = Halt().eval(), torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    cm = dycomp.compile(model, (x,), backend="torch", optimize=False)
    site = f"test_path_coverage.py:{_line('> 5.0')}"
    assert cm.check.full and {a[:2] for a in cm.check.arms} == {(site, k) for k in range(3)}
    where = f"test_path_coverage.py:{_line('the rare arm')}"
    gm = cm.executor.modules[next(n for n, r in cm.graph.regions.items() if where in r.lines)]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        wrong = gm.graph.call_function(torch.add, (out.args[0][0], 1.0))
    out.args = ((wrong, *out.args[0][1:]),)
    gm.recompile()
    with pytest.raises(MismatchError) as e:
        path_check(model.forward, cm, (x,), {})
    assert f"true arm of the decision at {site}" in str(e.value), str(e.value)


class AndWhile(torch.nn.Module):
    """`while t and k < 3`: the host passes `t` on as the value of the `and`, so forcing
    its read would not force the loop; the check must not report a false mismatch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f = torch.nn.Linear(4, 4)

    def forward(self, x):
        k = 0
        while x.sum() > -10.0 and k < 3:
            x = torch.tanh(self.f(x))
            k += 1
        return x, k


def test_decision_reused_as_value_is_listed_not_forced():
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    report = dycomp.compile(AndWhile().eval(), (x,), backend="onnx").check
    assert report.unchecked and all("as a value" in why for why in report.unchecked.values())
    assert len(report.checked) >= 1 and not report.full
