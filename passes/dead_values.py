"""DeadValueElimination: drop region outputs, host ops and regions nobody uses.

A host list, dict or set that is only changed (`lst.append(x)`, `d[k] = v`, ...) and
copied into other such containers, never read, is dead too, with its changes: a list a
model keeps on `self` for training (policy_net's `self.saved_actions`), which the
compiled program does not return. Its appends would otherwise keep the branches around
them on the host."""

from __future__ import annotations

from collections import Counter

from dycomp.frontend.convert import MUTATORS
from dycomp.ir.program import Assign, CallRegion, HostOp, If, expr_vars, walk
from dycomp.passes.base import Pass, PassResult
from dycomp.passes.regions import call_sites, set_outputs


class DeadValueElimination(Pass):
    name = "dead-values"

    def __call__(self, graph) -> PassResult:
        modified = False
        while self._once(graph):
            modified = True
        return PassResult(graph, modified)

    def _once(self, graph) -> bool:
        dead = dead_containers(graph.body)
        used = Counter(v for s in walk(graph.body) for v in s.uses()
                       if not (isinstance(s, HostOp) and changes(s) in dead))
        changed = _drop_changes(graph.body, dead)
        for name, sites in call_sites(graph).items():
            changed |= _trim_region(graph.regions[name], sites, used)
        changed |= _prune_block(graph.body, used)
        live = set(call_sites(graph))
        for name in [n for n in graph.regions if n not in live]:
            del graph.regions[name]
            changed = True
        return changed


def _trim_region(region, sites, used) -> bool:
    outs = region.output_nodes
    keep = [i for i in range(len(outs)) if any(c.outs[i] in used for c in sites)]
    changed = len(keep) < len(outs)
    if changed:
        set_outputs(region.gm, [outs[i] for i in keep])
        for c in sites:
            c.outs = [c.outs[i] for i in keep]
    graph = region.gm.graph
    changed |= graph.eliminate_dead_code()
    phs = region.placeholders
    dead = [i for i, p in enumerate(phs) if not p.users]
    for i in dead:
        graph.erase_node(phs[i])
    for c in sites:
        c.args = [a for i, a in enumerate(c.args) if i not in dead]
    if changed or dead:
        region.gm.recompile()
    return changed or bool(dead)


def changes(s: HostOp):
    """The container a statement like `{0}.append({1})` or `{0}[{1}] = {2}` changes."""
    if s.out is not None or s.pure:
        return None
    op = s.expr.name
    method = op[1:] if op.startswith(".") else None
    return s.expr.args[0] if method in MUTATORS or op == "setitem" else None


def dead_containers(body) -> set:
    """Variables whose every use is a change to them or a copy into another such one."""
    uses: dict = {}
    for s in walk(body):
        for v in s.uses():
            uses.setdefault(v, []).append(s)
    dead = {changes(s) for s in walk(body) if isinstance(s, HostOp)} - {None}
    while True:
        kept = {v for v in dead if all(
            (isinstance(s, HostOp) and changes(s) == v)
            or (isinstance(s, Assign) and all(x == v and d in dead for d, x in
                                              zip(s.dsts, s.srcs) if v in expr_vars(x)))
            for s in uses.get(v, []))}
        if kept == dead:
            return dead
        dead = kept


def _drop_changes(body, dead: set) -> bool:
    kept = [s for s in body if not (isinstance(s, HostOp) and changes(s) in dead)]
    changed = len(kept) < len(body)
    body[:] = kept
    for s in body:
        for b in s.blocks():
            changed |= _drop_changes(b, dead)
    return changed


def _prune_block(body, used) -> bool:
    changed = False
    kept = []
    for s in body:
        for b in s.blocks():
            changed |= _prune_block(b, used)
        if isinstance(s, HostOp) and s.pure and (s.out is None or s.out not in used):
            changed = True
            continue
        if isinstance(s, Assign):
            pairs = [(d, x) for d, x in zip(s.dsts, s.srcs) if d in used]
            if len(pairs) < len(s.dsts):
                changed = True
                s.dsts, s.srcs = [d for d, _ in pairs], [x for _, x in pairs]
            if not s.dsts:
                continue
        if isinstance(s, CallRegion) and not s.outs:
            changed = True
            continue
        if isinstance(s, If) and not s.then and not s.orelse:
            changed = True
            continue
        kept.append(s)
    body[:] = kept
    return changed
