"""Run every region of a DynGraph once, with values wired as on *every* path at once.

A dependency graph traced from one execution of a dynamic network misses the modules
that run only on other paths. `AllPaths` walks the host program instead: both arms of
every branch, every loop body (twice, so loop-carried values meet their new values),
every region exactly as the program calls it. Where several definitions of a value can
reach a use (branch arms that re-join, a loop's entry and back edge) the region gets
their sum: the elementwise add couples their channels, which is what a consumer of
either needs. Values no region computes (entry arguments, host values) are the
region's traced example of that input, as a leaf Parameter (`leaves`).

The result is differentiable end to end, so autograd-based tools (Torch-Pruning's
dependency graph) see every region and every coupling in one trace.
"""

from __future__ import annotations

import torch

from dycomp.ir.program import Assign, CallRegion, HostOp, If, Loop, Return, expr_vars


class AllPaths:
    """`AllPaths(graph)(model, example_inputs)` runs every region; returns the list of
    every tensor a region produced.

    Afterwards `host_visible` lists the (region, output index) pairs the host program
    reads (returns, uses in host expressions and decisions), and `sources[(region, i)]`
    the (region, output index) pairs that fed the region's i-th input."""

    def __init__(self, graph):
        self.graph = graph
        self.host_visible: set[tuple[str, int]] = set()
        self.sources: dict[tuple[str, int], set] = {}
        self.leaves: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, model=None, example_inputs=None) -> list[torch.Tensor]:
        self.outputs: list[torch.Tensor] = []
        self._block(self.graph.body, {})
        return self.outputs

    def _block(self, body, env: dict) -> dict:
        """`env`: variable -> the (tensor, (region, output index)) that may define it."""
        for s in body:
            if isinstance(s, CallRegion):
                self._call(s, env)
            elif isinstance(s, Assign):
                srcs = [expr_vars(x) for x in s.srcs]
                env.update({d: _union(env, v) for d, v in zip(s.dsts, srcs)})
            elif isinstance(s, (HostOp, Return, If)):
                used = _union(env, s.uses())
                self.host_visible |= {tag for _, tag in used}
                if isinstance(s, HostOp) and s.out is not None:
                    env[s.out] = used
            if isinstance(s, If):
                arms = [self._block(b, dict(env)) for b in (s.then, s.orelse)]
                env = _merge(env, *arms)
            elif isinstance(s, Loop):
                once = self._block(s.body, dict(env))
                env = _merge(env, self._block(s.body, _merge(env, once)))
        return env

    def _call(self, s: CallRegion, env: dict):
        region = self.graph.regions[s.region]
        args = []
        for i, (v, ph) in enumerate(zip(s.args, region.placeholders)):
            fit = _fitting(env.get(v, []), ph.meta["example"])
            self.sources.setdefault((s.region, i), set()).update(tag for _, tag in fit)
            args.append(_sum([t for t, _ in fit]) if fit else self._leaf(s.region, i, ph))
        outs = region.gm(*args)
        for i, (v, o) in enumerate(zip(s.outs, outs)):
            env[v] = [(o, (s.region, i))] if isinstance(o, torch.Tensor) else []
            if isinstance(o, torch.Tensor) and o.requires_grad:
                self.outputs.append(o)


    def _leaf(self, region: str, i: int, ph) -> torch.Tensor:
        """The example of an input no region produced (an entry argument, a host value):
        a float one is a Parameter, so dependency tracers see where it flows."""
        leaf = self.leaves.get((region, i))
        if leaf is None:
            ex = ph.meta["example"].detach().clone()
            leaf = torch.nn.Parameter(ex) if ex.is_floating_point() else ex
            self.leaves[(region, i)] = leaf
        return leaf


def _union(env: dict, vars_) -> list:
    out, seen = [], set()
    for v in vars_:
        for item in env.get(v, []):
            if id(item[0]) not in seen:
                seen.add(id(item[0]))
                out.append(item)
    return out


def _merge(*envs: dict) -> dict:
    keys = {k for e in envs for k in e}
    return {k: _union({0: [t for e in envs for t in e.get(k, [])]}, [0]) for k in keys}


def _fitting(candidates: list, example: torch.Tensor) -> list:
    return [(t, tag) for t, tag in candidates
            if t.shape == example.shape and t.dtype == example.dtype]


def _sum(tensors: list) -> torch.Tensor:
    """The sum of the candidates (couples their channels), or the one candidate."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total
