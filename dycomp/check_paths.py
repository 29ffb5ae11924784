"""Path-covering self-check: drive every host decision both ways, eager and compiled.

The random-input check (`check.differential_check`) only sees the arms its inputs take.
Here each host decision `v = bool(t)  # file.py:L` is *forced* (teacher forcing): the
compiled host program is re-loaded with every such read wrapped in a hook, and eager
PyTorch runs under a `TorchFunctionMode` that makes the `bool(tensor)` read (or the
comparison on a scalar read out of a tensor, `dycomp/check_forcing.py`) at the same
source line answer the same way. A decision is identified by its source line and its
occurrence there (the k-th read at that line in one run: an exit in a loop, a loop
iteration). Starting from the example's natural path, every arm seen and not yet
checked is forced the other way (breadth first, so arms only reachable through forced
ones are found too). A forced run counts only when both sides read the forced decision
after the same decisions (aligned); eager raising when forced marks the arm unreachable;
an arm that cannot be forced (eager reads no decision there) is listed with the reason,
and checked only if a natural input takes it.

Arms are counted on the program the host dispatches; for an ONNX model whose branches
were fused into `If` / `Loop` nodes, on the shipped fused models with their decisions
made forceable (`dycomp/check_fused.py`), or where that cannot be done (a switch whose
cases were gathered into one graph), on the check-only unfused program of the same
exported region models (`executor.unfused`), the reason in `CheckReport.target`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from dataclasses import dataclass, field

import torch

from dycomp.check import compare, compare_raised, variants
from dycomp.check_forcing import (
    EagerForcing,
    Forcer,
    Runaway,
    decision_sites,
    forced_source,
    plain,
    reused_sites,
)
from dycomp.errors import MismatchError
from dycomp.ir.program import SWITCH_CASE
from dycomp.runtime.host import HostProgram

log = logging.getLogger(__name__)

_MAX_OCCURRENCES = 64  # forced per site (loop iterations, exits of one line)


@dataclass
class CheckReport:
    """What the self-check ran: inputs, forced runs, arms and regions covered."""

    inputs: int = 0
    forced_runs: int = 0
    arms: set = field(default_factory=set)  # (site, occurrence, value) seen
    checked: set = field(default_factory=set)  # ... compared with eager on that arm
    unreachable: dict = field(default_factory=dict)  # arm -> why (eager raised)
    unforced: dict = field(default_factory=dict)  # arm -> why it could not be forced
    regions: set = field(default_factory=set)
    regions_run: set = field(default_factory=set)
    selected: set = field(default_factory=set)  # sites whose arms a region computes
    target: str = "compiled program"
    fused_aside: str = ""  # why the fused model's own decisions were not forced

    @property
    def full(self) -> bool:
        return self.arms <= self.checked | set(self.unreachable)

    @property
    def unchecked(self) -> dict:
        """Arm -> why it was not checked (neither forced nor taken by a natural input)."""
        return {a: self.unforced.get(a, "not forced") for a in
                sorted(self.arms - self.checked - set(self.unreachable))}

    def summary(self) -> str:
        un = f", {len(self.unreachable)} unreachable" if self.unreachable else ""
        left = self.unchecked
        why = f", {len(left)} unchecked ({'; '.join(sorted(set(left.values())))})" \
            if left else ""
        sel = f", {len(self.selected)} selected in regions (natural inputs only)" \
            if self.selected else ""
        return (f"{len(self.checked)}/{len(self.arms)} decision arms checked{un}{why}{sel} "
                f"({self.forced_runs} forced runs), {len(self.regions_run)}/"
                f"{len(self.regions)} regions run, {self.inputs} inputs; on the "
                f"{self.target}")

    def to_json(self) -> dict:
        return {"inputs": self.inputs, "forced_runs": self.forced_runs,
                "arms": len(self.arms), "arms_checked": len(self.checked),
                "unreachable": sorted(_arm(a) for a in self.unreachable),
                "unchecked": {_arm(a): why for a, why in self.unchecked.items()},
                "selected_in_regions": sorted(self.selected),
                "regions": len(self.regions), "regions_run": len(self.regions_run),
                "target": self.target}


def _arm(a: tuple) -> str:
    site, k, value = a
    return f"{site}#{k}={value}"


@dataclass
class _Setup:
    """What every run of one check shares."""

    fn: object
    cm: object
    program: HostProgram
    sites: set  # the host program's decision sites
    scalar_sites: set  # ... those eager decides by comparing a scalar read there
    gate_sites: set  # ... gates multiplied in that gate-to-branch made branches
    eager_read: set = field(default_factory=set)  # (site, k) eager read, last run
    aside: dict = field(default_factory=dict)  # site -> why it is answered naturally
    switch_sites: set = field(default_factory=set)  # ... cases of a switch `options[i]`


def path_check(fn, cm, args: tuple, kwargs: dict, n: int = 2, more: int = 0
               ) -> CheckReport:
    """The example and `n` random inputs on the compiled model, then every decision arm
    forced on both sides; raises `MismatchError` on the first difference, naming the
    input, the forced decisions, the output and the arm's source line.

    Each arm seen and not yet checked is the target of a forced run (breadth first: the
    decisions before it as in the run that saw it, it the other way). Such a run also
    flips, greedily, every further decision whose other arm is unchecked (all 54 gates
    of gated54 in one run); a greedy run that fails (eager raises, the two sides read
    different decisions, outputs differ) is rerun with its target alone, and flipping
    stops, so that failures name one arm. Eager runs once per input or forced run: a
    few random inputs suffice; up to `more` further ones run while arms that cannot be
    forced are left unchecked or a region selects between arms."""
    with _one_thread():
        return _path_check(fn, cm, args, kwargs, n, more)


def _path_check(fn, cm, args: tuple, kwargs: dict, n: int, more: int) -> CheckReport:
    report = CheckReport()
    run = _setup(fn, cm, report)
    queued: set = set()
    queue = _next_targets(run, _forced_run(run, args, kwargs, {}, None, report), report,
                          queued)
    greedy = True
    while queue:
        plan, target = queue.pop(0)
        if target in report.checked or target in report.unreachable:
            continue
        taken = _forced_run(run, args, kwargs, plan, target, report,
                            _flipper(report) if greedy else None)
        if taken is None:  # a greedy run failed: its target alone, and no more flipping
            greedy = False
            if target[0] in run.aside:
                _unforced(run, target, report)
                continue
            queue.insert(0, ({key: v for key, v in plan.items()
                              if key[0] not in run.aside}, target))
            continue
        queue += _next_targets(run, taken, report, queued)
    report.inputs = 1 + _random_check(run, args, kwargs, n, more, report)
    report.checked &= report.arms
    log.info("path check: %s", report.summary())
    return report


def _next_targets(run: _Setup, taken: list, report: CheckReport, queued: set) -> list:
    """(plan, arm) for each decision of a run whose other arm is not yet checked. One
    eager did not read in that run is not forced: a run with the same decisions before
    it would not read it either."""
    out, read = [], run.eager_read
    for i, (site, k, value) in enumerate(taken):
        report.arms.update({(site, k, value), (site, k, not value)})
        other = (site, k, not value)
        if other in report.checked or other in queued:
            continue
        queued.add(other)
        if k >= _MAX_OCCURRENCES:
            report.unforced[other] = f"beyond {_MAX_OCCURRENCES} occurrences"
            continue
        if (site, k) not in read or site in run.aside:
            _unforced(run, other, report)
            continue
        out.append(({**{(s, j): v for s, j, v in taken[:i]}, (site, k): not value}, other))
    return out


def _flipper(report: CheckReport):
    """Flip a decision when its other arm is neither checked nor known not to run."""
    def flip(site: str, k: int, natural: bool) -> bool:
        other = (site, k, not natural)
        return k < _MAX_OCCURRENCES and other not in report.checked and \
            other not in report.unreachable and other not in report.unforced
    return flip


def _setup(fn, cm, report: CheckReport) -> _Setup:
    program = _host_program(cm, report)
    report.regions = set(cm.graph.regions) if program is cm.program and cm.graph else \
        set(program.region_lines)
    report.selected = _selected_sites(cm.graph)
    sites, scalar = decision_sites(program.unforced_source)
    sites -= report.selected
    reused = reused_sites(program.unforced_source) & sites
    sites -= reused
    applied = getattr(cm.graph, "applied", ())
    lines = {p: {a.line for a in applied if a.pass_name == p}
             for p in ("tensor-conditions", "gate-to-branch")}
    run = _Setup(fn, cm, program, sites, (lines["tensor-conditions"] | scalar) & sites,
                 lines["gate-to-branch"] & sites, aside=dict.fromkeys(reused, _REUSED))
    run.switch_sites = _switch_sites(program.unforced_source) & sites
    return run


def _switch_sites(source: str) -> set:
    """Decision sites that are cases of a switch `options[i]` (`frontend.ops.switch`)."""
    return set(re.findall(rf"^\s*\w+ = bool\(\w+\)  # (\S+:\d+)\n\s*# [^\n]*: "
                          rf"{re.escape(SWITCH_CASE)}", source, re.M))


def _random_check(run: _Setup, args: tuple, kwargs: dict, n: int, more: int,
                  report: CheckReport) -> int:
    """Random inputs (the example's shapes) on the program users run, and while arms are
    left unchecked, on the forced program too (the arms they take are checked); how
    many ran. The `more` run while arms are unchecked or selected inside regions (those
    only natural inputs reach)."""
    count = 0
    for i, (a, k) in enumerate(variants(args, kwargs, n + more)):
        if i == 0:
            continue  # the example: checked by the unforced run
        if i > n and report.full and not report.selected:
            break
        expected = _eager_outcome(run.fn, a, k)
        raised = _compare_user_program(run.cm, expected, a, k, f"random input #{i}")
        if not report.full and not raised:
            _compiled_run(run, a, k, {}, None, expected, report, f"random input #{i}")
        count += 1
    return count


@contextlib.contextmanager
def _one_thread():
    """PyTorch on one intra-op thread meanwhile (eager, and the torch backend's regions).
    The check runs batch-1 forward passes whose ops are too small to gain from a second
    thread; two threads waiting on each other on a busy machine cost 10x (gated_mul: 27
    ms a forward on one thread, 240-290 ms on two, with other processes on the cores).
    Restored after (the setting is process-wide: other threads' PyTorch ops meanwhile
    use one too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _eager():
    """Eager reference runs: no autograd."""
    return torch.no_grad()


def _eager_outcome(fn, args: tuple, kwargs: dict):
    """Eager's outputs, or the exception it raised (a model's own `raise`, `assert`)."""
    try:
        with _eager():
            return fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    except Exception as e:
        return e


def _compare_user_program(cm, expected, args: tuple, kwargs: dict, which: str) -> bool:
    """The compiled model as users run it against eager's `expected` (outputs, or an
    exception of the same class and message); the path it took (which may load traced
    copies of fused models) only when they differ. Whether they raised."""
    try:
        actual = cm.run(*args, **kwargs)
    except Exception as e:
        actual = e
    if isinstance(expected, BaseException) or isinstance(actual, BaseException):
        diff = compare_raised(expected, actual)
    else:
        diff = compare(expected, actual)
    if diff:
        try:
            path = " -> ".join(cm.run(*args, return_path=True, **kwargs)[1])
        except Exception:
            path = "raised"
        raise MismatchError(f"compiled model differs from eager on {which}: {diff} "
                            f"(compiled path: {path})")
    return isinstance(expected, BaseException)


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
        program = HostProgram(forced_source(cm.host_source), cm.executor,
                              cm.program.region_lines)
        program.unforced_source = cm.host_source
        return program
    from dycomp.runtime.onnx_executor import OnnxExecutor

    source, models, lines = unfused
    fused = _fused_program(cm, source, lines, report)
    if fused is not None:
        return fused
    report.target = "unfused program of the same ONNX region models" + (
        f" ({report.fused_aside})" if report.fused_aside else "")
    program = HostProgram(forced_source(source), OnnxExecutor(models, threads=1), lines)
    program.unforced_source = source
    return program


def _fused_program(cm, source: str, lines: dict, report: CheckReport) -> HostProgram | None:
    """The shipped fused program, its fused models' decisions forceable
    (`check_fused`); None (logged) where the rebuilt models are not the shipped ones."""
    from dycomp.check_fused import ForcingExecutor, NotForceable, marked_fusion

    try:
        fused_source, models, ran = marked_fusion(cm)
        executor = ForcingExecutor(cm.executor, models, ran)
    except NotForceable as e:
        log.info("path check on the unfused program: %s", e)
        report.fused_aside = str(e)
        return None
    except Exception as e:  # a forcing copy ONNX Runtime cannot load, say: not forced
        log.warning("path check on the unfused program: the fused models' decisions "
                    "could not be made forceable: %s", e)
        report.fused_aside = f"its decisions could not be made forceable: {e}"[:300]
        return None
    program = HostProgram(forced_source(fused_source), executor, lines)
    executor.program = program
    program.unforced_source = source
    report.target = "fused ONNX model (decisions of its If / Loop nodes forced)"
    return program


def _forced_run(run: _Setup, args, kwargs, plan: dict, target, report: CheckReport,
                flip=None) -> list | None:
    """Run eager and compiled forced by `plan` (and `flip`); the compiled side's
    decisions ([] when the target could not be forced, None when a run with greedy
    flips failed)."""
    eager = Forcer(plan, run.sites, flip)
    try:
        with _eager(), EagerForcing(eager, run.scalar_sites):
            expected = plain(run.fn(*copy.deepcopy(args), **copy.deepcopy(kwargs)))
    except Exception as e:  # the forced arm cannot run in eager (shapes, ...)
        if not plan:  # the example itself: the model's own exception, raised alike?
            _compare_user_program(run.cm, e, args, kwargs, "the example inputs")
            return []
        if eager.flipped:
            return None
        if target is not None:
            report.unreachable.setdefault(target, f"{type(e).__name__}: {e}"[:300] if not
                                          isinstance(e, Runaway) else "a loop that never ends")
        return []
    if not plan and run.program is not run.cm.program:  # fused: the model users run, too
        _compare_user_program(run.cm, expected, args, kwargs, "the example inputs")
    return _compiled_run(run, args, kwargs, plan, target, expected, report,
                         "the example inputs", eager)


def _compiled_run(run: _Setup, args, kwargs, plan: dict, target, expected,
                  report: CheckReport, which: str, eager: Forcer | None = None
                  ) -> list | None:
    """The forced program on `args` (eager's answers as its plan) against `expected`;
    the decisions it took."""
    from dycomp.api import _to_torch

    greedy = eager is not None and eager.flipped
    inputs, use_torch = run.cm._inputs(args, kwargs)
    compiled = Forcer(eager.answers() if eager is not None and target else {}, run.sites,
                      aside=run.aside)
    run.program.fn.__globals__["_F"] = compiled
    try:
        actual, path = run.program.run_path(*inputs)
        aligned = target is None or (target in eager.taken and compiled.follows(eager))
    except Runaway:
        aligned = False
    except Exception as e:  # eager ran: compared on the program users run, if natural
        if target is None:
            _compare_user_program(run.cm, expected, args, kwargs, which)
            return []
        if greedy:
            return None
        report.unforced[target] = f"the compiled program raised when forced: {e}"[:300]
        return []
    if eager is not None and (opposite := compiled.opposite(eager)):
        run.aside.update(dict.fromkeys(opposite, _OPPOSITE))  # now answered naturally
        run.sites -= opposite
        if target is not None:
            return None  # rerun without them
    if not aligned:
        return None if greedy else _unforced(run, target, report)
    diff = compare(expected, _to_torch(actual) if use_torch else actual)
    if diff and greedy:
        return None
    if diff:
        raise MismatchError(_message(diff, plan, target, path, which))
    run.eager_read = set(eager.answers()) if eager is not None else set()
    report.forced_runs += target is not None
    report.regions_run.update(path)
    aside = compiled.set_aside + [t for t in compiled.taken if t[0] in run.aside]
    report.checked.update(compiled.taken + aside)
    for site, k, value in aside:
        report.arms.update({(site, k, value), (site, k, not value)})
        report.unforced.setdefault((site, k, not value), run.aside[site])
    return [t for t in compiled.taken if t[0] not in run.aside]


_SWITCH = ("a case of `options[i]`, `i` read out of a tensor (a switch index): eager indexes "
           "with the int, reading no decision to force there, and the regions also read "
           "the index tensor, which answering the host's case alone leaves unforced")
_OPPOSITE = "eager and compiled answer the decision at that line unlike (a negation)"
_REUSED = "the host also uses the tensor read there as a value (`t and k < 6`)"


def _unforced(run: _Setup, target: tuple, report: CheckReport) -> list:
    """Note why `target` was not forced."""
    site = target[0]
    report.unforced[target] = run.aside[site] if site in run.aside else (
        "a gate multiplied in (gate-to-branch): eager reads no decision there"
        if site in run.gate_sites else
        _SWITCH if site in run.switch_sites else
        "a decision on a scalar eager does not compare at that line (a switch index)"
        if site in run.scalar_sites else
        "eager reads no decision at that line after the same decisions")
    return []


def _message(diff: str, plan: dict, target, path: tuple, which: str) -> str:
    forced = ", ".join(f"{s} (#{k}) -> {v}" for (s, k), v in plan.items()) or "none"
    where = f"the {'true' if target[2] else 'false'} arm of the decision at {target[0]}" \
        f" (occurrence #{target[1]})" if target else "its own path"
    return (f"compiled model differs from eager on {where}: {diff}; input: {which}, "
            f"forced decisions: {forced}; compiled path: {' -> '.join(path)}")
