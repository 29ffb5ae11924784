"""FuseAcrossDecisions: merge regions across a decision where dispatch costs more.

Two rewrites of a host `if` whose condition is `bool(t)` of a region output:

* **Common work first.** When both arms start by calling regions that begin with the
  same computation (same ops on the same weights and inputs), that work moves before
  the `if`, where MergeAdjacentRegions folds it into the region computing the
  condition. Nothing is computed twice or speculatively, so this always fires; an arm
  region left empty disappears with its dispatch.
* **Speculation.** When both arms are region calls and phi assignments only, and the
  arms are cheap, both arms run before the `if` and a `torch.where(t, then, else)`
  selects each tensor the arms join; assignments of Python values (a branch id) stay
  in a host `if` with no region call. The regions then merge with their neighbours.
  Arms that index with a tensor (an index that may be valid only under the condition)
  are not speculated.
  Cost rule: the taken arm's dispatches (`cost.DISPATCH_US` each, measured) are saved
  and the other arm's work is added. Taking each arm half the time, it fires when
  `est(then) + est(else) + selects < DISPATCH_US * (calls(then) + calls(else)) / 2`.
  Where the backend would lower the branch into an ONNX `If` node instead (every
  joined value a tensor), what speculation saves is that node, `cost.IF_US`.
  A gated block that GateToBranch made a branch never qualifies (its arm costs more
  than a dispatch by that pass's own rule).
"""

from __future__ import annotations

import torch
from torch import fx

from dycomp.ir.dyngraph import Applied, Region
from dycomp.ir.program import Assign, CallRegion, HostOp, If, Var
from dycomp.passes import cost
from dycomp.passes.base import Pass, PassResult
from dycomp.passes.carve import (
    Names,
    bind_outputs,
    call_piece,
    carvable,
    carve,
    compute_nodes,
    fresh_name,
    output_vars,
)
from dycomp.passes.dedup_regions import node_target
from dycomp.passes.regions import (
    call_sites,
    rebuild,
    rewrite_body,
    tensor_vars,
    var_examples,
)

INDEXING = {"getitem", "index_select", "gather", "take", "take_along_dim", "embedding",
            "index", "index_put", "scatter", "narrow", "select"}


class FuseAcrossDecisions(Pass):
    name = "fuse-across-decisions"

    def __init__(self, if_nodes: bool = False):
        self.if_nodes = if_nodes

    def __call__(self, graph) -> PassResult:
        self.names = Names(graph, "fd")
        self.tensors = tensor_vars(graph)
        self.examples = var_examples(graph)
        return PassResult(graph, rewrite_body(graph.body, lambda body, i: self._rewrite(
            graph, body, i)))

    def _rewrite(self, graph, body, i):
        """The statements replacing `body[i]` if it is a decision worth fusing across."""
        s = body[i]
        if not (isinstance(s, If) and _cond_tensor(body[:i], s) is not None):
            return None
        return self._hoist_common(graph, s) or self._speculate(graph, body[:i], s)

    # -- common work at the start of both arms ----------------------------------------
    def _hoist_common(self, graph, s: If):
        if not (s.then and s.orelse and isinstance(s.then[0], CallRegion)
                and isinstance(s.orelse[0], CallRegion)):
            return None
        ct, ce = s.then[0], s.orelse[0]
        rt, re = graph.regions[ct.region], graph.regions[ce.region]
        if not (carvable(rt) and carvable(re)) or ct.region == ce.region:
            return None
        table: dict = {}
        kt, ke = _keys(rt, ct, table), _keys(re, ce, table)
        common_e = {k: n for n, k in ke.items()}
        shared = {n for n, k in kt.items() if k in common_e}
        if cost.nodes_us(rt.gm, shared) <= 0:
            return None
        first, rest = carve(graph, rt, [shared, set(compute_nodes(rt.gm)) - shared])
        env = dict(zip(rt.placeholders, ct.args))
        hoisted = call_piece(first, env, self.names, s.line)
        s.then[0:1] = _rest_call(ct, rest, env, rt, self.names)
        env_e = dict(zip(re.placeholders, ce.args))
        match_e = {common_e[kt[n]]: n for n in shared}
        e_first, e_rest = carve(graph, re, [set(match_e), set(compute_nodes(re.gm)) - set(
            match_e)])
        del graph.regions[e_first.region]
        for n in e_first.outs:
            env_e[n] = env[match_e[n]]
        s.orelse[0:1] = _rest_call(ce, e_rest, env_e, re, self.names)
        for r in (rt, re):
            if not call_sites(graph).get(r.name):
                del graph.regions[r.name]
        graph.applied.append(Applied(
            self.name, s.line or "?", f"{len(shared)} ops both arms start with run once, "
            "before the decision", "one dispatch fewer when merged with the condition's region"))
        return [hoisted, s]

    # -- speculation ---------------------------------------------------------------------
    def _speculate(self, graph, before, s: If):
        arms = [_arm(s.then), _arm(s.orelse)]
        if None in arms:
            return None
        (calls_t, phis_t), (calls_e, phis_e) = arms
        if not all(_speculable(graph.regions[c.region]) for c in calls_t + calls_e):
            return None
        t = _cond_tensor(before, s)
        if set(phis_t) != set(phis_e) or not (calls_t or calls_e) or not self._tensor(t):
            return None
        joined = [d for d in phis_t if self._tensor(phis_t[d]) and self._tensor(phis_e[d])]
        if not all(self._same_type(phis_t[d], phis_e[d]) for d in joined):
            return None
        est = sum(_call_us(graph, c) for c in calls_t + calls_e) + cost.OP_US * len(joined)
        saved = cost.DISPATCH_US * (len(calls_t) + len(calls_e)) / 2
        if self.if_nodes and len(joined) == len(phis_t):  # it would become an `If` node
            saved = cost.IF_US
        if est >= saved:
            return None
        out = calls_t + calls_e
        if joined:
            out.append(self._select(graph, s, t, joined, phis_t, phis_e))
        host_t = _host_assign(phis_t, joined, s.line)
        host_e = _host_assign(phis_e, joined, s.line)
        if host_t or host_e:
            out.append(If(s.cond, host_t, host_e, line=s.line, source=s.source))
        graph.applied.append(Applied(
            self.name, s.line or "?", f"both arms ({len(calls_t + calls_e)} region calls, "
            f"~{est:.0f} us) computed and selected", f"~{saved - est:.0f} us saved per call"))
        return out

    def _tensor(self, v) -> bool:
        """A variable that holds a tensor whose example value is known."""
        return (isinstance(v, Var) and v in self.tensors
                and isinstance(self.examples.get(v), torch.Tensor))

    def _same_type(self, a, b) -> bool:
        x, y = self.examples.get(a), self.examples.get(b)
        return (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
                and x.shape == y.shape and x.dtype == y.dtype)

    def _select(self, graph, s: If, t: Var, joined, phis_t, phis_e) -> CallRegion:
        """A region `d = where(t, then_d, else_d)` for every joined tensor `d`."""
        g = fx.Graph()
        args = list(dict.fromkeys([t] + [phis_t[d] for d in joined] + [phis_e[d] for d in
                                                                         joined]))
        ph = {}
        for v in args:
            ph[v] = g.placeholder(v.name)
            ph[v].meta["example"] = self.examples[v]
        c = g.call_method("reshape", (ph[t], ()))
        c.meta["example"] = self.examples[t].reshape(())
        outs = []
        for d in joined:
            n = g.call_function(torch.where, (c, ph[phis_t[d]], ph[phis_e[d]]))
            n.meta.update(example=self.examples[phis_t[d]], line=s.line)
            outs.append(n)
            self.examples[d] = n.meta["example"]
        g.output(tuple(outs))
        name = fresh_name(graph)
        graph.regions[name] = Region(name, rebuild(g, []), lines=[s.line] if s.line else [])
        return CallRegion(name, args, list(joined), line=s.line)


def _cond_tensor(before: list, s: If):
    """The region output `t` of the `c = bool(t)` the `if` tests, or None."""
    for x in reversed(before):
        if isinstance(x, HostOp) and x.out == s.cond:
            ok = x.expr.name == "bool" and isinstance(x.expr.args[0], Var)
            return x.expr.args[0] if ok else None
    return None


def _arm(arm: list):
    """(region calls, {phi: source}) of an arm made only of calls then assignments."""
    calls, phis = [], {}
    for x in arm:
        if isinstance(x, CallRegion) and not phis:
            calls.append(x)
        elif isinstance(x, Assign):
            phis.update(zip(x.dsts, x.srcs))
        else:
            return None
    return calls, phis


def _speculable(region) -> bool:
    """No op that may fail on values its branch would have excluded: indexing with a
    tensor (an index valid only under the condition), embedding lookups."""
    if region.gm is None:
        return False
    for n in region.gm.graph.nodes:
        tensor_index = any(isinstance(a, fx.Node) for a in n.args[1:])
        if cost.kind(n) in INDEXING and tensor_index:
            return False
        if n.op == "call_module" and isinstance(region.gm.get_submodule(n.target),
                                                 torch.nn.Embedding):
            return False
    return True


def _host_assign(phis: dict, joined, line) -> list:
    rest = [(d, x) for d, x in phis.items() if d not in joined]
    return [Assign([d for d, _ in rest], [x for _, x in rest], line=line)] if rest else []


def _call_us(graph, c: CallRegion) -> float:
    r = graph.regions[c.region]
    return cost.region_us(r) if r.gm is not None else cost.DISPATCH_US


def _keys(region, site, table: dict) -> dict:
    """Structural key of every compute node: equal keys compute the same value. Keys are
    numbers interned in `table` (shared by the regions compared): a key spelled out
    would hold its inputs' keys, growing exponentially along a chain."""
    env = {ph: _Ref(table.setdefault(("in", v.name), len(table)))
           for ph, v in zip(region.placeholders, site.args)}
    keys = {}
    for n in region.gm.graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        args = fx.node.map_arg((n.args, n.kwargs), lambda x: env[x])
        env[n] = _Ref(table.setdefault((n.op, node_target(region.gm, n), repr(args)),
                                       len(table)))
        if n.op != "get_attr":
            keys[n] = env[n].key
    return keys


class _Ref:
    """A node's interned key inside another node's arguments."""

    def __init__(self, key: int):
        self.key = key

    def __repr__(self) -> str:
        return f"<node {self.key}>"


def _rest_call(site: CallRegion, piece, env: dict, region, names) -> list:
    """The statements replacing `site` once its region's common work is hoisted: a call
    of the rest (if any is left) and assignments of outputs computed before the `if`."""
    named = output_vars(region, site)
    stmts = [call_piece(piece, env, names, site.line, named)] if piece is not None else []
    return stmts + bind_outputs(region, site, env, site.line)
