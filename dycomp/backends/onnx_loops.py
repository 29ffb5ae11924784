"""Host loops rewritten into the shape of an ONNX `Loop` body.

An ONNX `Loop` runs its body while a condition holds, up to an optional trip count;
the body cannot `break`. `plan_loop` rewrites a host loop into that shape, or says why
it cannot:

- `for t in range(a, b, s)` gives the trip count; `t = a + s * iteration`.
- A `while` loop's leading test (`v = n < 8; if not v: break`, pure scalar host ops) is
  *rotated*: evaluated once before the loop and again at the end of each iteration.
  When the test is `n < K` (or `<=`) of a counter that every iteration that goes on
  adds 1 to (`counter`), and `n` starts at a known int, the builder gives the `Loop` a
  trip count instead: no test in the body (act: 5 % faster).
- Every other `break` sets a stop flag, and the statements after the `if` that breaks
  move into its other arm, so the rest of the iteration is skipped.
- `lst.append(x)` of a Python scalar becomes a per-iteration (value, taken) pair that
  the ONNX `Loop` emits as scan outputs; the host extends `lst` after the call.
- Scalar reads that start a branch arm move before the branch, so an arm left with
  assignments only becomes a select instead of an `If`.

Arms of every rewritten branch are closed: a variable assigned in one arm and live after
it is assigned in the other arm too (to its own value).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnx import TensorProto

from dycomp.ir.program import Assign, Break, Continue, HostOp, If, Lit, Loop, Return, Var, walk

APPEND = ".append"  # the host operator of `lst.append(v)`


class NotLowerable(Exception):
    """The loop stays a host loop; the message says why (logged at debug level)."""


@dataclass
class Append:
    lst: Var  # the host list
    value: Var  # per-iteration value (scan output)
    taken: Var  # per-iteration flag: appended in this iteration


@dataclass
class LoopPlan:
    loop: Loop
    body: list  # no Break / append left; sets `stop`
    trips: int | None = None  # for range loops
    start: int = 0
    step: int = 1
    header: list = field(default_factory=list)  # rotated `while` test
    exit_var: Var | None = None  # the header's break condition ...
    exit_when: bool = True  # ... breaks when it has this truth value
    count: tuple | None = None  # (n, K): the header tests n < K of a counter (`counter`)
    stop: Var | None = None
    appends: list = field(default_factory=list)


def plan_loop(loop: Loop, names, kinds: dict, outside: set) -> LoopPlan:
    """`names()` gives fresh host variables; `kinds` (scalar kinds) gains the new ones;
    `outside`: the variables defined outside the loop body."""
    plan = LoopPlan(loop, list(loop.body))
    if loop.iter_expr is not None:
        r = loop.iter_expr.value if isinstance(loop.iter_expr, Lit) else None
        if not isinstance(r, range):
            raise NotLowerable("iterates over something other than a literal range")
        plan.trips, plan.start, plan.step = len(r), r.start, r.step
    else:
        _rotate(plan, kinds)
        plan.count = counter(plan)
    if any(isinstance(s, Return) for s in walk(plan.body)):
        raise NotLowerable("returns from inside the loop")
    body = plan.body
    if any(isinstance(s, Break) for s in _own(body)):
        plan.stop = names()
        kinds[plan.stop] = TensorProto.BOOL
        body = [Assign([plan.stop], [Lit(False)])] + _unbreak(body, plan.stop)
    elif any(isinstance(s, Continue) for s in _own(body)):
        body = _unbreak(body, None)
    plan.body = _hoist_reads(_appends(body, plan, names, kinds), kinds)
    plan.body = _close(plan.body, set(outside))
    return plan


def _rotate(plan: LoopPlan, kinds: dict) -> None:
    """Move a `while` loop's leading scalar test out of the body."""
    body = plan.body
    k = 0
    while k < len(body) and isinstance(body[k], HostOp) and body[k].out in kinds:
        k += 1
    test = body[k] if k < len(body) else None
    if not (isinstance(test, If) and {len(test.then), len(test.orelse)} == {0, 1}
            and any(isinstance(s, Break) for s in test.then + test.orelse)):
        return
    header_defs = {s.out for s in body[:k]}
    rest_uses = {v for s in walk(body[k + 1:]) for v in s.uses()}
    if header_defs & rest_uses:
        return
    plan.header, plan.exit_var = body[:k], test.cond
    plan.exit_when = bool(test.then)
    plan.body = body[k + 1:]


def counter(plan: LoopPlan) -> tuple[Var, int] | None:
    """(n, K) when the rotated test is `n < K` (or `n <= K - 1`) for a literal K and every
    iteration that goes on assigns `n = n + 1` once: the loop runs while n < K, K - n0
    times at most."""
    ops = [s for s in plan.header if isinstance(s, HostOp)]
    if len(ops) != len(plan.header) or not 1 <= len(ops) <= 2:
        return None
    test = ops[0]
    fmt, args = test.expr.name, test.expr.args
    bound = {"lt": 0, "le": 1}.get(fmt)
    if bound is None or not (isinstance(args[0], Var) and isinstance(args[1], Lit)) or \
            type(args[1].value) is not int:
        return None
    goes_on = (plan.exit_var == test.out and not plan.exit_when) or (
        len(ops) == 2 and ops[1].expr.name == "not" and ops[1].expr.args == (test.out,)
        and plan.exit_var == ops[1].out and plan.exit_when)
    n = args[0]
    steps = {s.out for s in walk(plan.body) if isinstance(s, HostOp)
             and s.expr.name == "add" and s.expr.args == (n, Lit(1))}
    if not goes_on or _counts(plan.body, n, steps, None) != (True, True):
        return None
    return n, args[1].value + bound


def _counts(stmts: list, n: Var, steps: set, ok: bool | None) -> tuple[bool, bool | None]:
    """(every `continue` in `stmts` comes after `n = n + 1`, whether the end does: None
    when no path reaches it). `ok`: how n was assigned on this path so far (None: not
    yet; True: once, from one of the `steps` computed from n)."""
    for s in stmts:
        if isinstance(s, Break):
            return True, None
        if isinstance(s, Continue):
            return ok is True, None
        if isinstance(s, If):
            arms = [_counts(arm, n, steps, ok) for arm in (s.then, s.orelse)]
            ends = [end for _, end in arms if end is not None]
            if not all(each for each, _ in arms):
                return False, None
            if not ends:
                return True, None
            ok = all(ends)
        elif isinstance(s, Assign) and n in s.dsts:
            ok = ok is None and s.srcs[s.dsts.index(n)] in steps
        elif n in {d for x in walk([s]) for d in x.defs()}:
            return False, None
    return True, ok is True


def _own(stmts: list):
    """`walk`, without going into inner loops (their breaks are their own)."""
    for s in stmts:
        yield s
        if not isinstance(s, Loop):
            for b in s.blocks():
                yield from _own(b)


def _unbreak(stmts: list, stop: Var | None) -> list:
    """`stmts` without break / continue: an arm that breaks sets `stop`, one that
    continues ends there; the other arm runs the rest of the iteration."""
    out = []
    for i, s in enumerate(stmts):
        if isinstance(s, Break):
            return out + [Assign([stop], [Lit(True)], line=s.line)]
        if isinstance(s, Continue):
            return out
        if not isinstance(s, If) or not any(isinstance(x, (Break, Continue)) for x in _own([s])):
            out.append(s)
            continue
        rest = stmts[i + 1:]  # what runs after the branch, in each arm that goes on
        arms = [_unbreak(arm + rest, stop) for arm in (s.then, s.orelse)]
        return out + [If(s.cond, arms[0], arms[1], source=s.source, line=s.line)]
    return out


def _appends(body: list, plan: LoopPlan, names, kinds: dict) -> list:
    """`lst.append(x)` -> `value, taken = x, True`; defaults at the top of the body."""
    sites = [s for s in _own(body) if isinstance(s, HostOp) and not s.pure]
    site_ids = {id(s) for s in sites}
    by_list: dict = {}
    for s in sites:
        if s.expr.name != APPEND or s.expr.args[1] not in kinds:
            raise NotLowerable(f"host side effect `{s.expr.fmt}` at {s.line}")
        lst, x = s.expr.args
        if lst in by_list:
            raise NotLowerable(f"{lst} is appended to twice in one iteration")
        value, taken = names(), names()
        kinds[value], kinds[taken] = kinds[x], TensorProto.BOOL
        by_list[lst] = Append(lst, value, taken)
    if any(lst in s.uses() for s in walk(body) for lst in by_list
           if id(s) not in site_ids):
        raise NotLowerable("a list appended to is also read in the loop")
    plan.appends = list(by_list.values())
    zero = {TensorProto.BOOL: False, TensorProto.INT64: 0, TensorProto.DOUBLE: 0.0}

    def rewrite(stmts):
        out = []
        for s in stmts:
            if id(s) in site_ids:
                a = by_list[s.expr.args[0]]
                out.append(Assign([a.value, a.taken], [s.expr.args[1], Lit(True)], line=s.line))
            elif isinstance(s, If):
                out.append(If(s.cond, rewrite(s.then), rewrite(s.orelse), source=s.source,
                              line=s.line))
            else:
                out.append(s)
        return out

    defaults = [Assign([a.value, a.taken], [Lit(zero[kinds[a.value]]), Lit(False)])
                for a in plan.appends]
    return defaults + rewrite(body)


def _hoist_reads(stmts: list, kinds: dict) -> list:
    """Scalar host ops that start an arm (`tok = t.item()`) move before the branch: they
    are cheap and cannot fail, and an arm left with assignments only needs no `If`."""
    out = []
    for s in stmts:
        if isinstance(s, If):
            arms = [_hoist_reads(a, kinds) for a in (s.then, s.orelse)]
            for arm in arms:
                while arm and isinstance(arm[0], HostOp) and arm[0].pure and arm[0].out in kinds:
                    out.append(arm.pop(0))
            s = If(s.cond, arms[0], arms[1], source=s.source, line=s.line)
        out.append(s)
    return out


def _defined(stmts: list) -> set:
    return {d for s in walk(stmts) for d in s.defs()}


def _close(stmts: list, before: set) -> list:
    """`stmts` with both arms of every branch assigning the same variables: an arm that
    leaves a variable defined before the branch alone assigns it to itself."""
    known, out = set(before), []
    for s in stmts:
        if isinstance(s, If):
            then, other = _close(s.then, known), _close(s.orelse, known)
            for arm, missing in ((then, _defined(other) - _defined(then)),
                                 (other, _defined(then) - _defined(other))):
                keep = sorted((v for v in missing if v in known), key=lambda v: v.name)
                if keep:
                    arm.append(Assign(keep, list(keep)))
            s = If(s.cond, then, other, source=s.source, line=s.line)
        out.append(s)
        known |= _defined([s])
    return out
