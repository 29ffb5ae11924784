"""MergeAdjacentRegions: two regions called one after the other with no decision
between them become one region (one dispatch instead of two).

Pure host statements between the two calls (host arithmetic, `.item()`, phi copies,
branches that only assign host values)
are moved out of the way when that keeps every value defined before its use: before
the first call if they do not read its outputs, after the second if it does not read
theirs."""

from __future__ import annotations

from torch import fx

from dycomp.ir.program import Assign, CallRegion, HostOp, If, walk
from dycomp.passes.base import Pass, PassResult
from dycomp.passes.regions import call_sites, rebuild


class MergeAdjacentRegions(Pass):
    name = "merge-regions"

    def __call__(self, graph) -> PassResult:
        counts = {k: len(v) for k, v in call_sites(graph).items()}
        return PassResult(graph, _merge_block(graph, graph.body, counts))


def _merge_block(graph, body, counts) -> bool:
    changed = False
    for s in body:
        for b in s.blocks():
            changed |= _merge_block(graph, b, counts)
    i = 0
    while i < len(body):
        a = body[i]
        j = _next_call(body, i)
        if j is None or not _mergeable(a, body[j], counts):
            i += 1
            continue
        split = _reorder(a, body[i + 1:j], body[j])
        if split is None:
            i += 1
            continue
        before, after = split
        _merge(graph, a, body[j])
        body[i:j + 1] = before + [a] + after
        i += len(before)
        changed = True
    return changed


def _next_call(body, i):
    """Index of the next region call after body[i] with only pure host statements
    between, or None."""
    if not isinstance(body[i], CallRegion):
        return None
    for j in range(i + 1, len(body)):
        s = body[j]
        if isinstance(s, CallRegion):
            return j
        if not _pure_host(s):
            return None
    return None


def _pure_host(s) -> bool:
    """Host work with no effect but its assignments: phi copies, pure host ops, and
    branches made only of those (a branch id chosen by a decision)."""
    if isinstance(s, If):
        return all(_pure_host(x) for x in s.then + s.orelse)
    return isinstance(s, Assign) or (isinstance(s, HostOp) and s.pure)


def _mergeable(a, b, counts) -> bool:
    return (a.region != b.region and counts.get(a.region) == 1
            and counts.get(b.region) == 1)


def _reorder(a: CallRegion, between: list, b: CallRegion):
    """Split the statements between two calls into those that can run before `a` and
    those that can run after `b`; None if some must stay between."""
    before, after = [], []
    late = set(a.outs)  # values only available after `a` (or after moved statements)
    read_late = set()  # values read by the statements moved after `b`
    for s in between:
        uses = {v for x in walk([s]) for v in x.uses()}
        defs = {v for x in walk([s]) for v in x.defs()}
        if not uses & late and not defs & (set(a.args) | read_late):
            before.append(s)
        elif not defs & set(b.args):
            after.append(s)
            late |= defs
            read_late |= uses
        else:
            return None
    return before, after


def _merge(graph, a: CallRegion, b: CallRegion) -> None:
    ra, rb = graph.regions[a.region], graph.regions.pop(b.region)
    new = fx.Graph()
    inputs = {}

    def placeholder(var, old):
        if var not in inputs:
            inputs[var] = new.placeholder(var.name)
            inputs[var].meta = dict(old.meta)
        return inputs[var]

    env = {}
    for var, ph in zip(a.args, ra.placeholders):
        env[ph] = placeholder(var, ph)
    a_out = _copy_body(new, ra.gm.graph, env)
    produced = dict(zip(a.outs, a_out))
    env = {}
    for var, ph in zip(b.args, rb.placeholders):
        env[ph] = produced[var] if var in produced else placeholder(var, ph)
    b_out = _copy_body(new, rb.gm.graph, env)
    new.output(tuple(a_out) + tuple(b_out))
    ra.gm = rebuild(new, [ra.gm, rb.gm])
    ra.lines = list(dict.fromkeys(ra.lines + rb.lines))
    a.args, a.outs = list(inputs), a.outs + b.outs


def _copy_body(new: fx.Graph, old: fx.Graph, env: dict) -> list:
    outs = []
    for n in old.nodes:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            outs = [env[x] for x in n.args[0]]
            continue
        env[n] = new.node_copy(n, lambda x: env[x])
    return outs
