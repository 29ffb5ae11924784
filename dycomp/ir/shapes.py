"""Which region inputs can change shape between calls.

Inputs of the compiled method have fixed shapes (specialized to the examples). Shapes
vary only through loop-carried values that grow or shrink (`meta["sym"]` on region
inputs) and whatever is computed from them; this forward dataflow analysis marks every
region input that may vary with `meta["dynamic"] = True` (backends then export those
dimensions as dynamic).
"""

from __future__ import annotations

from dycomp.ir.program import Assign, CallRegion, HostOp, Loop, expr_vars, walk


def mark_dynamic(graph) -> set:
    """Annotate region placeholders; returns the set of host variables of varying shape."""
    dynamic: set = set()
    for r in graph.regions.values():
        for ph in r.placeholders:
            ph.meta["dynamic"] = bool(ph.meta.get("sym"))
    changed = True
    while changed:
        changed = False
        for s in walk(graph.body):
            new = _flows(s, dynamic, graph)
            if new - dynamic:
                dynamic |= new
                changed = True
    for s in walk(graph.body):
        if isinstance(s, CallRegion):
            for var, ph in zip(s.args, graph.regions[s.region].placeholders):
                if var in dynamic:
                    ph.meta["dynamic"] = True
    return dynamic


def _flows(s, dynamic, graph) -> set:
    if isinstance(s, CallRegion):
        phs = graph.regions[s.region].placeholders
        if any(v in dynamic or ph.meta.get("sym") for v, ph in zip(s.args, phs)):
            return set(s.outs)
        return _value_dependent_outs(s, graph)
    elif isinstance(s, Assign):
        return {d for d, e in zip(s.dsts, s.srcs) if any(v in dynamic for v in expr_vars(e))}
    elif isinstance(s, HostOp) and s.out is not None:
        if any(v in dynamic for v in s.uses()) or "stack" in s.expr.fmt or "[" in s.expr.fmt \
                or s.expr.name == "comprehension":
            return {s.out}
    elif isinstance(s, Loop) and s.target is not None:
        return {s.target}
    return set()


def _value_dependent_outs(s, graph) -> set:
    """Outputs whose size depends on values computed in the region (`x[mask]`,
    `nonzero`: the frontend marks their nodes' varying dims, `meta["sym"]`)."""
    region = graph.regions[s.region]
    if region.gm is None:
        return set()
    return {v for v, n in zip(s.outs, region.output_nodes)
            if hasattr(n, "meta") and n.meta.get("sym")}
