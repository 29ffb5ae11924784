"""DeadValueElimination: drop region outputs, host ops and regions nobody uses."""

from __future__ import annotations

from collections import Counter

from dycomp.ir.program import Assign, CallRegion, HostOp, If, walk
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
        used = Counter(v for s in walk(graph.body) for v in s.uses())
        changed = False
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
