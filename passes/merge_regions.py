"""MergeAdjacentRegions: two regions called one after the other with no decision
between them become one region (one dispatch instead of two)."""

from __future__ import annotations

from torch import fx

from dycomp.ir.program import CallRegion
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
    while i + 1 < len(body):
        a, b = body[i], body[i + 1]
        if (isinstance(a, CallRegion) and isinstance(b, CallRegion) and a.region != b.region
                and counts.get(a.region) == 1 and counts.get(b.region) == 1):
            _merge(graph, a, b)
            del body[i + 1]
            changed = True
        else:
            i += 1
    return changed


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
