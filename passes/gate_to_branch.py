"""GateToBranch: a block gated by multiplication becomes a real branch.

Networks trained with hard gates are often deployed as written for training:

    m = (p > 0.5).float()
    x = m * f(x) + (1 - m) * x        # or torch.where(m > 0.5, f(x), x), or x + m * f(x)

Every block is then computed even when its gate is off. Where `m` is provably a 0/1
gate (a comparison cast to a number, reshaped, complemented or multiplied with other
gates, or a straight-through estimator over one) and the gated operand `f(x)` is work
that nothing else reads, the region is split at the blend:

    pre:   everything before, and `any(m != 0)`        (host: if that is true ...)
    then:  f(x) and the blend, exactly as written       (... run this arm)
    else:  the other operand, `x`                        (otherwise the result is x)
    post:  everything after

The branch tests the actual multiplier, so the rewrite is exact for every batch: a
batch with any gate on runs the original arithmetic. (One difference: where a gate is
off and f(x) holds an inf or NaN, the original gives NaN and the branch gives x.)

Cost rule: the rewrite adds one host decision (`cost.DISPATCH_US`, measured) to every
call and saves the gated work whenever the gate is off, so it fires only where the
estimated time of the skipped work exceeds one dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from dycomp.ir.dyngraph import Applied
from dycomp.ir.program import Assign, HostOp, If, Op
from dycomp.passes import cost
from dycomp.passes.base import Pass, PassResult
from dycomp.passes.carve import (
    COMPUTE,
    Names,
    bind_outputs,
    call_piece,
    carvable,
    carve,
    compute_nodes,
    output_vars,
)
from dycomp.passes.regions import call_sites, replace_stmt

CMP = {"gt", "lt", "ge", "le", "eq", "ne", "logical_and", "logical_or", "logical_not",
       "logical_xor", "isnan", "isinf", "bool"}
KEEP = {"float", "double", "half", "to", "type_as", "view", "reshape", "unsqueeze", "squeeze",
        "flatten", "expand", "expand_as", "permute", "transpose", "contiguous", "detach",
        "clone", "repeat"}


@dataclass
class Gate:
    """A blend `out` whose operand `skip` need not run when `mult` is zero everywhere;
    the result is then `other`. `mult` is a node or `("not", cond)` for a where."""

    out: fx.Node
    skip: fx.Node
    other: fx.Node
    mult: object


class GateToBranch(Pass):
    name = "gate-to-branch"

    def __init__(self, min_us: float = cost.DISPATCH_US):
        self.min_us = min_us

    def __call__(self, graph) -> PassResult:
        names = Names(graph, "gb")
        work, changed = list(graph.regions), False
        while work:
            name = work.pop(0)
            sites = call_sites(graph).get(name, [])
            region = graph.regions.get(name)
            if not sites or not carvable(region):
                continue
            found = self._find(region)
            if found is None:
                continue
            gate, then = found
            pieces, pred = _split(graph, region, gate, then)
            for site in sites:
                _rewrite(graph, site, region, gate, pieces, pred, names)
            del graph.regions[name]
            work += [p.region for i, p in enumerate(pieces) if p is not None and i != 1]
            graph.applied.append(self._note(region, gate, then))
            changed = True
        return PassResult(graph, changed)

    def _find(self, region):
        """The first gated blend worth a branch, with the nodes its then-arm computes."""
        gm = region.gm
        for n in compute_nodes(gm):
            for gate in _blends(n):
                then = _exclusive(gm, gate)
                if gate.skip in then and cost.nodes_us(gm, then) > self.min_us:
                    return gate, then
        return None

    def _note(self, region, gate, then) -> Applied:
        us = cost.nodes_us(region.gm, then)
        mflop = sum(cost.node_flops(region.gm, n) for n in then) / 1e6
        return Applied(self.name, gate_line(gate) or "?",
                       f"gated block ({len(then)} ops) runs only where its gate is on",
                       f"~{us:.0f} us ({mflop:.1f} MFLOP) saved per call with the gate off")


def _blends(n: fx.Node) -> list[Gate]:
    """The ways `n` blends a gated operand with another value (most specific first)."""
    k, a = cost.kind(n), n.args
    if n.kwargs or len(a) < 2:
        return []
    if k == "where" and len(a) == 3 and all(isinstance(x, fx.Node) for x in a):
        c, t, f = a
        return [g for g in (Gate(n, t, f, c), Gate(n, f, t, ("not", c))) if _same_type(n, g)]
    if k not in ("add", "radd") or not all(isinstance(x, fx.Node) for x in a[:2]):
        return []
    out = []
    for p, q in (a[:2], a[1::-1]):
        pm, qm = _gated(p), _gated(q)
        if pm and qm and _complement(pm[0], qm[0]):
            out.append(Gate(n, pm[1], qm[1], pm[0]))
        elif pm:
            out.append(Gate(n, pm[1], q, pm[0]))
    return [g for g in out if _same_type(n, g)]


def _gated(n: fx.Node):
    """(gate, operand) if `n` multiplies an operand by a 0/1 gate."""
    if cost.kind(n) != "mul" or n.kwargs or not all(isinstance(x, fx.Node) for x in n.args):
        return None
    a, b = n.args
    return (a, b) if is_gate(a) else (b, a) if is_gate(b) else None


def is_gate(n) -> bool:
    """Provably 0/1 valued (or, for a straight-through estimator, zero where its hard
    gate is zero)."""
    if not isinstance(n, fx.Node) or n.op not in COMPUTE:
        return False
    k, a = cost.kind(n), n.args
    if k in CMP:
        return True
    if k in KEEP:
        return is_gate(a[0])
    if k == "rsub" and len(a) == 2 and a[1] == 1:
        return is_gate(a[0])
    if k == "sub" and len(a) == 2 and a[0] == 1:
        return is_gate(a[1])
    if k == "mul" and len(a) == 2:
        return all(is_gate(x) for x in a)
    if k == "where" and len(a) == 3:
        return all(isinstance(x, (int, float)) and x in (0, 1) for x in a[1:])
    return k == "add" and len(a) == 2 and _straight_through(*a)


def _straight_through(a, b) -> bool:
    """`hard - p.detach() + p`, `(hard - p).detach() + p` or `hard + (p - p.detach())`
    in eval mode: zero exactly where the hard gate is zero."""
    for x, y in ((a, b), (b, a)):
        if _is(x, "sub") and is_gate(x.args[0]) and _detached(x.args[1], y):
            return True
        if _is(x, "detach") and _is(x.args[0], "sub") and is_gate(x.args[0].args[0]) \
                and x.args[0].args[1] is y:
            return True
        if is_gate(x) and _is(y, "sub") and _detached(y.args[1], y.args[0]):
            return True
    return False


def _is(x, k: str) -> bool:
    return isinstance(x, fx.Node) and x.op in COMPUTE and cost.kind(x) == k and bool(x.args)


def _detached(x, p) -> bool:
    return _is(x, "detach") and x.args[0] is p


def _complement(g, h) -> bool:
    """`h` is `1 - g` (or `g` is `1 - h`)."""
    def one_minus(x, y):
        k = cost.kind(x)
        return (k == "rsub" and x.args == (y, 1)) or (k == "sub" and x.args == (1, y))
    return one_minus(h, g) or one_minus(g, h)


def _same_type(n: fx.Node, g: Gate) -> bool:
    """Skipping is exact only if the other operand already has the blend's shape."""
    out, other = n.meta.get("example"), g.other.meta.get("example")
    return (isinstance(out, torch.Tensor) and isinstance(other, torch.Tensor)
            and out.shape == other.shape and out.dtype == other.dtype)


def _exclusive(gm: fx.GraphModule, gate: Gate) -> set:
    """Nodes needed only by the blend, and not by the gate or the other operand."""
    mult = gate.mult[1] if isinstance(gate.mult, tuple) else gate.mult
    needed = _ancestors([mult, gate.other])
    then = {gate.out}
    for n in reversed(compute_nodes(gm)):
        if n not in then and n not in needed and n.users and set(n.users) <= then:
            then.add(n)
    return then


def _ancestors(nodes) -> set:
    seen, stack = set(), list(nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack += n.all_input_nodes
    return seen


def _split(graph, region, gate: Gate, then: set):
    """Pieces (pre with the predicate, then, post) of `region`."""
    g = region.gm.graph
    pred = _predicate(g, gate)
    after = _descendants(gate.out) - {gate.out}
    nodes = compute_nodes(region.gm)
    pre = {n for n in nodes if n not in then and n not in after}
    return carve(graph, region, [pre, then, after], keep={pred}), pred


def _predicate(g: fx.Graph, gate: Gate) -> fx.Node:
    """A 0-d bool that is true where any gate is on, inserted after the multiplier:
    `any(mult != 0)`, `any(cond)` for a multiplier that is a cast or reshape of the
    boolean `cond`, `any(not cond)` for the else-operand of a where. A one-element
    condition is reshaped instead of reduced (two ops fewer inside the session)."""
    negate = isinstance(gate.mult, tuple)
    m = gate.mult[1] if negate else gate.mult
    cond = m if negate else _source_bool(m)
    with g.inserting_after(m):
        if negate:
            on = _node(g, "logical_not", (m,), m.meta["example"].logical_not())
        elif cond is not None:
            on = cond
        else:
            on = _node(g, "ne", (m, 0), m.meta["example"].ne(0))
    with g.inserting_after(m if on is cond else on):
        ex = on.meta["example"]
        if ex.numel() == 1 and not (on.meta.get("sym") or m.meta.get("sym")):
            pred = _node(g, "reshape", (on, ()), ex.reshape(()))
        else:
            pred = _node(g, "any", (on,), ex.any())
    for n in {on, pred} - {cond}:
        n.meta["line"] = gate.out.meta.get("line")
    return pred


def _source_bool(m: fx.Node):
    """The boolean node `m` is a cast or reshape of (`(p > 0.5).float().view(...)`)."""
    while cost.kind(m) in KEEP:
        m = m.args[0]
        if not isinstance(m, fx.Node):
            return None
    ex = m.meta.get("example")
    return m if isinstance(ex, torch.Tensor) and ex.dtype == torch.bool else None


def _node(g: fx.Graph, method: str, args: tuple, example) -> fx.Node:
    n = g.call_method(method, args)
    n.meta["example"] = example
    return n


def _descendants(n: fx.Node) -> set:
    seen, stack = set(), [n]
    while stack:
        x = stack.pop()
        if x not in seen and x.op != "output":
            seen.add(x)
            stack += list(x.users)
    return seen


def _rewrite(graph, site, region, gate: Gate, pieces, pred, names: Names) -> None:
    """Replace `site` by: pre; if any(gate): then; post."""
    line = site.line
    env = dict(zip(region.placeholders, site.args))
    named = output_vars(region, site)
    pre, then, post = pieces
    stmts = [call_piece(pre, env, names, line, named)]
    cond = names.var()
    stmts.append(HostOp(cond, Op("bool", (env[pred],)), line=gate_line(gate)))
    y = named.pop(gate.out, None) or names.var()
    arm = call_piece(then, env, names, line)
    stmts.append(If(cond, [arm, Assign([y], [env[gate.out]])],
                    [Assign([y], [env[gate.other]])], line=gate_line(gate),
                    source="gate on (dycomp: gate-to-branch)"))
    env[gate.out] = y
    if post is not None:
        stmts.append(call_piece(post, env, names, line, named))
    stmts += bind_outputs(region, site, env, line)
    replace_stmt(graph.body, site, stmts)


def gate_line(gate: Gate):
    return gate.out.meta.get("line")
