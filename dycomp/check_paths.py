"""Path-covering self-check: drive every host decision both ways, eager and compiled.

The random-input check (`check.differential_check`) only sees the arms its inputs take.
Here each host decision `v = bool(t)  # file.py:L` is *forced* (teacher forcing): the
compiled host program is re-loaded with every such read wrapped in a hook, and eager
PyTorch runs under a `TorchFunctionMode` that makes the `bool(tensor)` read at the same
source line answer the same way. A decision is identified by its source line and its
occurrence there (the k-th read at that line in one run: an exit in a loop, a loop
iteration). Starting from the example's natural path, every arm seen and not yet
checked is forced the other way (breadth first, so arms only reachable through forced
ones are found too). A forced run counts only when both sides read the forced decision
after the same decisions (aligned); eager raising when forced marks the arm unreachable.

Arms are counted on the program the host dispatches; for an ONNX model whose branches
were fused into `If` nodes, that is the check-only unfused program of the same exported
region models (`executor.unfused`), the fused model itself being checked on the
example and random inputs (see README).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

from dycomp.check import compare, variants
from dycomp.errors import MismatchError
from dycomp.runtime.host import HostProgram

log = logging.getLogger(__name__)

# a host decision: `v3 = bool(v2)  # nested_if.py:63`
_DECISION = re.compile(r"^(\s*)(\w+) = bool\((\w+)\)  # (\S+:\d+)$", re.M)
_MAX_DECISIONS = 10_000  # per run: a forced loop that no longer ends
_MAX_OCCURRENCES = 64  # forced per site (loop iterations, exits of one line)
_SKIP = (os.path.dirname(torch.__file__), os.path.dirname(__file__))


class _Runaway(Exception):
    """A forced run read more than `_MAX_DECISIONS` decisions."""


class Forcer:
    """Answers decision reads by (site, occurrence) from `plan`; records what was read."""

    def __init__(self, plan: dict):
        self.plan, self.counts, self.taken = plan, Counter(), []

    def __call__(self, site: str, value: bool) -> bool:
        k = self.counts[site]
        self.counts[site] += 1
        value = self.plan.get((site, k), bool(value))
        self.taken.append((site, k, value))
        if len(self.taken) > _MAX_DECISIONS:
            raise _Runaway(site)
        return value

    def aligned(self, other: Forcer) -> bool:
        """Both read every forced decision, after the same decisions."""
        last = max((i for i, (s, k, _) in enumerate(self.taken) if (s, k) in self.plan),
                   default=-1)
        done = {(s, k) for s, k, _ in self.taken} >= set(self.plan)
        return done and self.taken[:last + 1] == other.taken[:last + 1]


class _EagerForcing(TorchFunctionMode):
    """`bool(tensor)` in eager code answers as the forcer says for its source line."""

    def __init__(self, forcer: Forcer):
        super().__init__()
        self.forcer = forcer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") == "__bool__":
            return self.forcer(_caller_site(), out)
        return out


def _caller_site() -> str:
    """`file.py:line` of the user code that read the decision."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_SKIP):
        f = f.f_back
    return "?" if f is None else f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


def forced_source(source: str) -> str:
    """The host program with each decision read going through `_F(site, value)`."""
    return _DECISION.sub(r"\1\2 = _F('\4', bool(\3))", source)


@dataclass
class CheckReport:
    """What the self-check ran: inputs, forced runs, arms and regions covered."""

    inputs: int = 0
    forced_runs: int = 0
    arms: set = field(default_factory=set)  # (site, occurrence, value) seen
    checked: set = field(default_factory=set)  # ... compared on an aligned run
    unreachable: dict = field(default_factory=dict)  # arm -> why (eager raised)
    regions: set = field(default_factory=set)
    regions_run: set = field(default_factory=set)
    selected: set = field(default_factory=set)  # sites whose arms a region computes
    target: str = "compiled program"

    @property
    def full(self) -> bool:
        return self.arms <= self.checked | set(self.unreachable)

    def summary(self) -> str:
        un = f", {len(self.unreachable)} unreachable" if self.unreachable else ""
        sel = f", {len(self.selected)} selected in regions" if self.selected else ""
        return (f"{len(self.checked)}/{len(self.arms)} decision arms checked{un}{sel} "
                f"({self.forced_runs} forced runs), {len(self.regions_run)}/"
                f"{len(self.regions)} regions run, {self.inputs} random inputs; on the "
                f"{self.target}")

    def to_json(self) -> dict:
        return {"inputs": self.inputs, "forced_runs": self.forced_runs,
                "arms": len(self.arms), "arms_checked": len(self.checked),
                "unreachable": sorted(_arm(a) for a in self.unreachable),
                "unchecked": sorted(_arm(a) for a in self.arms - self.checked
                                    - set(self.unreachable)),
                "selected_in_regions": sorted(self.selected),
                "regions": len(self.regions), "regions_run": len(self.regions_run),
                "target": self.target}


def _arm(a: tuple) -> str:
    site, k, value = a
    return f"{site}#{k}={value}"


def path_check(fn, cm, args: tuple, kwargs: dict, n: int = 2) -> CheckReport:
    """The example and `n` random inputs on the compiled model, then every decision arm
    forced on both sides; raises `MismatchError` on the first difference, naming the
    input, the forced decisions, the output and the arm's source line. Eager runs once
    per input or forced path (the example's own eager result serves both its checks):
    the forced runs cover the arms, so a few random inputs suffice."""
    report = CheckReport()
    program = _host_program(cm, report)
    report.regions = set(cm.graph.regions) if program is cm.program and cm.graph else \
        set(program.region_lines)
    selected = _selected_sites(cm.graph)
    queue, tried = [{}], set()
    while queue:
        plan = queue.pop(0)
        taken = _forced_run(fn, cm, program, args, kwargs, plan, report)
        for site, k, value in taken:
            if site in selected:  # the region selects by the tensor itself: not forced
                report.selected.add(site)
                continue
            report.arms.add((site, k, value))
            other = (site, k, not value)
            report.arms.add(other)
            if other in report.checked or other in tried or k >= _MAX_OCCURRENCES:
                continue
            tried.add(other)
            queue.append({**{(s, j): v for s, j, v in taken[:taken.index((site, k, value))]},
                          (site, k): not value})
    report.inputs = 1 + _random_check(fn, cm, args, kwargs, n)
    report.checked &= report.arms
    log.info("path check: %s", report.summary())
    return report


def _random_check(fn, cm, args: tuple, kwargs: dict, n: int) -> int:
    """`n` random inputs (the example's shapes) on the program users run; how many."""
    for i, (a, k) in enumerate(variants(args, kwargs, n)):
        if i == 0:
            continue  # the example: checked by the unforced run
        with torch.no_grad():
            expected = fn(*copy.deepcopy(a), **copy.deepcopy(k))
        _compare_user_program(cm, expected, a, k, f"random input #{i}")
    return n


def _compare_user_program(cm, expected, args: tuple, kwargs: dict, which: str) -> None:
    """The compiled model as users run it against eager's `expected`; the path it took
    (which may load traced copies of fused models) only when they differ."""
    diff = compare(expected, cm.run(*args, **kwargs))
    if diff:
        _, path = cm.run(*args, return_path=True, **kwargs)
        raise MismatchError(f"compiled model differs from eager on {which}: {diff} "
                            f"(compiled path: {' -> '.join(path)})")


def _selected_sites(graph) -> set:
    """Decisions fuse-across-decisions made into a selection inside a region (both arms
    computed, chosen by the condition tensor): the host's read only picks Python values,
    so forcing it would not force the arm."""
    return {a.line for a in getattr(graph, "applied", ()) if
            a.pass_name == "fuse-across-decisions" and a.what.startswith("both arms")}


def _host_program(cm, report: CheckReport) -> HostProgram:
    """The program whose decisions are forced: the compiled one, or the unfused program
    of the same region models when branches were fused into the ONNX model."""
    unfused = getattr(cm.executor, "unfused", None)
    if unfused is None:
        return HostProgram(forced_source(cm.host_source), cm.executor,
                           cm.program.region_lines)
    from dycomp.runtime.onnx_executor import OnnxExecutor

    source, models, lines = unfused
    report.target = "unfused program of the same ONNX region models"
    return HostProgram(forced_source(source), OnnxExecutor(models), lines)


def _forced_run(fn, cm, program: HostProgram, args, kwargs, plan: dict,
                report: CheckReport) -> list:
    """Run eager and compiled forced by `plan`; the compiled side's decisions."""
    from dycomp.api import _to_torch

    eager, compiled = Forcer(plan), Forcer(plan)
    try:
        with torch.no_grad(), _EagerForcing(eager):
            expected = fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    except Exception as e:  # the forced arm cannot run in eager (shapes, ...)
        for (site, k), v in plan.items():
            report.unreachable.setdefault((site, k, v), f"{type(e).__name__}: {e}")
        return []
    if not plan and program is not cm.program:  # fused: the model users run, too
        _compare_user_program(cm, expected, args, kwargs, "the example inputs")
    inputs, use_torch = cm._inputs(args, kwargs)
    program.fn.__globals__["_F"] = compiled
    try:
        actual, path = program.run_path(*inputs)
    except _Runaway:
        return []
    if not eager.aligned(compiled):
        return []
    report.forced_runs += bool(plan)
    report.regions_run.update(path)
    diff = compare(expected, _to_torch(actual) if use_torch else actual)
    if diff:
        raise MismatchError(_message(diff, plan, compiled.taken, path, program))
    report.checked.update(compiled.taken)
    return compiled.taken


def _message(diff: str, plan: dict, taken: list, path: tuple, program) -> str:
    forced = ", ".join(f"{s} (#{k}) -> {v}" for (s, k), v in plan.items()) or "none"
    arm = next(((s, v) for s, k, v in reversed(taken) if (s, k) in plan), None)
    where = f"the {'true' if arm[1] else 'false'} arm of the decision at {arm[0]}" if arm \
        else "the example's own path"
    return (f"compiled model differs from eager on {where}: {diff}; input: the example "
            f"inputs, forced decisions: {forced}; compiled path: {' -> '.join(path)}")
