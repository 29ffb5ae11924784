"""HoistLoopInvariants: work a host loop repeats on unchanged inputs runs once, before it.

A decode loop written as

    for t in range(max_len):
        keys = self.key(enc)        # enc does not change inside the loop
        ...

recomputes the projection at every step. The loop body is one region; its nodes that
depend only on loop-invariant values (host variables the loop never assigns, and
parameters) form a piece that is carved out and called once before the loop, and the
body region takes that piece's results as inputs instead.

A value the loop assigns anywhere in its body (including in-place updates, which the
frontend turns into assignments) is not invariant, nor is a value that is only
conditionally defined before the loop. Random ops are never hoisted.

Cost rule: hoisting adds no dispatch per iteration (the hoisted call runs once, and
merges into the region before the loop when adjacent) but passes the hoisted values as
extra inputs, ~`cost.OP_US` each per call; it fires when the hoisted work's estimated
time exceeds that, and always runs the hoisted work even when the loop runs zero times
(the work is pure, so the only cost is time).
"""

from __future__ import annotations

from dycomp.ir.dyngraph import Applied
from dycomp.ir.program import CallRegion, Loop, walk
from dycomp.passes import cost
from dycomp.passes.base import Pass, PassResult
from dycomp.passes.carve import (
    Names,
    bind_outputs,
    call_piece,
    carvable,
    carve,
    compute_nodes,
    output_vars,
)
from dycomp.passes.regions import call_sites, replace_stmt, rewrite_body

RANDOM = {"rand", "randn", "rand_like", "randn_like", "randint", "bernoulli", "multinomial",
          "dropout", "normal", "uniform", "exponential"}


class HoistLoopInvariants(Pass):
    name = "hoist-loop-invariants"

    def __init__(self, min_us: float | None = None):
        self.min_us = min_us  # None: the cost rule; a number: hoist work estimated above it

    def __call__(self, graph) -> PassResult:
        self.names = Names(graph, "hl")
        # inner loops first (rewrite_body's order): their invariants may go further out
        return PassResult(graph, rewrite_body(graph.body, lambda body, i: self._before(
            graph, body[i])))

    def _before(self, graph, s):
        """`s` preceded by its invariant work if it is a loop with some, else None."""
        hoisted = self._loop(graph, s) if isinstance(s, Loop) else []
        return hoisted + [s] if hoisted else None

    def _loop(self, graph, loop: Loop) -> list:
        """Calls to place before `loop` (its body's invariant work), rewriting the body."""
        variant = {v for s in walk(loop.body) for v in s.defs()} | set(loop.defs())
        variant |= graph.maybe_undef
        before = []
        for site in [s for s in walk(loop.body) if isinstance(s, CallRegion)]:
            region = graph.regions[site.region]
            if not carvable(region):
                continue
            hoist = _invariant(region, site, variant)
            limit = cost.OP_US * len(_frontier(hoist)) if self.min_us is None else self.min_us
            if cost.nodes_us(region.gm, hoist) <= limit:
                continue
            before += self._carve(graph, loop, site, region, hoist)
        return before

    def _carve(self, graph, loop, site, region, hoist) -> list:
        rest = set(compute_nodes(region.gm)) - hoist
        if not rest:  # the whole call is invariant: it moves before the loop as it is
            replace_stmt(loop.body, site, [])
            self._note(graph, loop, region, hoist)
            return [site]
        first, second = carve(graph, region, [hoist, rest])
        env = dict(zip(region.placeholders, site.args))
        named = output_vars(region, site)
        outside = call_piece(first, env, self.names, loop.line)
        inner = call_piece(second, env, self.names, site.line, named)
        assigns = bind_outputs(region, site, env, site.line)
        site.region, site.args, site.outs = inner.region, inner.args, inner.outs
        replace_stmt(graph.body, site, [site] + assigns)
        if len(call_sites(graph).get(region.name, [])) == 0:
            del graph.regions[region.name]
        self._note(graph, loop, region, hoist)
        return [outside]

    def _note(self, graph, loop, region, hoist) -> None:
        us = cost.nodes_us(region.gm, hoist)
        graph.applied.append(Applied(
            self.name, _line(hoist) or loop.line or "?",
            f"{len(hoist)} loop-invariant ops computed once before the loop at {loop.line}",
            f"~{us:.0f} us saved per iteration after the first"))


def _invariant(region, site, variant: set) -> set:
    """Compute nodes of `region` that read only invariant inputs and parameters."""
    inv = {ph for ph, v in zip(region.placeholders, site.args) if v not in variant}
    inv |= {n for n in region.gm.graph.nodes if n.op == "get_attr"}
    out = set()
    for n in compute_nodes(region.gm):
        if cost.kind(n) not in RANDOM and all(x in inv for x in n.all_input_nodes):
            inv.add(n)
            out.add(n)
    return out


def _frontier(hoist: set) -> list:
    return [n for n in hoist if any(u not in hoist for u in n.users)]


def _line(nodes) -> str | None:
    return next((n.meta["line"] for n in nodes if n.meta.get("line")), None)
