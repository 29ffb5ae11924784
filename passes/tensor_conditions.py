"""TensorConditions: decide on a tensor, not on a scalar the host read out of it.

A switch over experts written as

    idx = int(torch.argmax(logits, -1).item())
    y = self.experts[idx](h) * probs[0, idx]

makes the host read the index, compare it with every candidate (`if idx == 0: ...`)
and pass it back into a region. Each comparison can run in a region instead (the 0-d
boolean `argmax == 0`), so every branch tests a tensor (`bool(t)`), which the ONNX
backend lowers into `If` nodes, and a region input that was the host scalar takes the
tensor (also for floats, `scale = float(h.abs().max())`, where the input is at least as
precise as the tensor read, so the value is the same). The host still reads the scalar
where the program returns it; those reads move down to their first use, so they no
longer split the run of regions and branches that the backend fuses.

A float read out with `.item()` is compared in double precision on the host. On a
float32 (or float64) tensor, `<`, `<=`, `>` and `>=` with a number are computed on the
tensor against the number rounded the way that decides every float32 as the host does
(`float32_bound`: `x.item() > 0.1` is `x > 0.099999994`); `int(x)` of a float, which
truncates, and `==` on floats stay on the host.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from dycomp.ir.dyngraph import Applied, Region
from dycomp.ir.program import (
    Break,
    CallRegion,
    Continue,
    HostOp,
    Lit,
    Op,
    Return,
    Var,
    float32_bound,
    walk,
)
from dycomp.passes.base import Pass, PassResult
from dycomp.passes.carve import Names, fresh_name
from dycomp.passes.regions import rebuild, replace_stmt, var_examples

COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
           ">": operator.gt, ">=": operator.ge}
_CMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}  # host operators
_READS = {"item", "int", "int_item", "float", "float_item"}
_EXACT = {"item", "float", "float_item"}  # a float's value unchanged


class TensorConditions(Pass):
    name = "tensor-conditions"

    def __call__(self, graph) -> PassResult:
        self.graph, self.names = graph, Names(graph, "tc")
        self.examples = var_examples(graph)
        roots = self._scalars()
        changed = False
        for s in list(walk(graph.body)):
            if isinstance(s, HostOp) and s.out is not None:
                changed |= self._condition(s, roots)
            elif isinstance(s, CallRegion):
                changed |= self._arguments(s, roots)
        if changed:
            _sink_reads(graph.body, set(roots))
        return PassResult(graph, changed)

    def _scalars(self) -> dict:
        """Host variable -> (the one-element tensor it was read from, the statement
        reading it first)."""
        roots, self.exact = {}, set()  # exact: float reads that keep the value
        self.wrapped = {}  # `range(n)[i]` of an integer read (a switch's index) -> n
        for s in walk(self.graph.body):
            if isinstance(s, HostOp) and s.expr.name == "range_index" and \
                    s.expr.args[1] in roots and isinstance(s.expr.args[0], Lit):
                roots[s.out] = roots[s.expr.args[1]]  # the same value where in range
                self.wrapped[s.out] = s.expr.args[0].value
                continue
            if not (isinstance(s, HostOp) and s.out is not None and s.expr.name in _READS):
                continue
            (src,) = s.expr.args
            if src in roots:
                roots[s.out] = roots[src]
            elif isinstance(src, Var) and _scalar(self.examples.get(src)):
                roots[s.out] = (src, s)
            else:
                continue
            if s.expr.name in _EXACT and (src in self.exact or src not in roots):
                self.exact.add(s.out)
        return roots

    def _condition(self, s: HostOp, roots: dict) -> bool:
        """`c = (idx == 2)` -> `c = bool(t)`, `t` computed right after idx is read."""
        symbol = _CMP.get(s.expr.name)
        args = s.expr.args
        if symbol is None or not args or args[0] not in roots:
            return False
        tensor, read = roots[args[0]]
        k = _operand(args)
        dtype = self.examples[tensor].dtype
        if _integer(self.examples[tensor]):
            k = k if isinstance(k, int) else None
        elif args[0] in self.exact and dtype in (torch.float32, torch.float64):
            k = float32_bound(symbol, k, float64=dtype == torch.float64)
        else:
            k = None
        if k is None:
            return False
        n = self.wrapped.get(args[0])
        if n is not None and not (symbol == "==" and 0 <= k < n):
            return False
        out = self._insert(read, tensor, lambda g, x: _compare(g, x, symbol, k, n), s.line)
        shown = s.expr.fmt.replace("{1}", repr(args[1].value)) if isinstance(args[1], Lit) \
            else s.expr.fmt
        s.expr = Op("bool", (out,))
        self.graph.applied.append(Applied(
            self.name, s.line or "?", f"host decision `{shown}` on a scalar read from "
            f"{tensor.name} computed on the tensor", "lets the backend fuse the branch"))
        return True

    def _arguments(self, s: CallRegion, roots: dict) -> bool:
        """A region input that was the host scalar takes the tensor (same dtype, 0-d)."""
        region = self.graph.regions[s.region]
        if region.gm is None:
            return False
        changed = False
        for i, (v, ph) in enumerate(zip(s.args, region.placeholders)):
            if v not in roots:
                continue
            tensor, read = roots[v]
            want = ph.meta.get("example")
            if not _holds(want, self.examples[tensor]):
                continue
            s.args[i] = self._insert(read, tensor, lambda g, x, dt=want.dtype: g.call_method(
                "to", (g.call_method("reshape", (x, ())), dt)), s.line)
            changed = True
        return changed

    def _insert(self, read: HostOp, tensor: Var, build, line) -> Var:
        """A one-op region `build(tensor)` called right after `read`; its output var."""
        g = fx.Graph()
        x = g.placeholder(tensor.name)
        x.meta["example"] = self.examples[tensor]
        out = build(g, x)
        for n in g.nodes:
            if n.op != "placeholder":
                args = fx.node.map_arg(n.args, lambda a: a.meta["example"])
                n.meta.update(example=_run(n, args), line=line)
        g.output((out,))
        name = fresh_name(self.graph)
        self.graph.regions[name] = Region(name, rebuild(g, []), lines=[line] if line else [])
        var = self.names.var()
        self.examples[var] = out.meta["example"]
        replace_stmt(self.graph.body, read, [read, CallRegion(name, [tensor], [var],
                                                               line=line)])
        return var


def _compare(g: fx.Graph, x, symbol: str, k, n: int | None):
    """`x op k` on the tensor as a 0-d value; with `n` (`range(n)[x] == k`, `x` in range:
    the host checks the range) `where(x < 0, x + n, x) == k`, the same index for every
    case (so the switch's cases still compare one value: `gather_switches`)."""
    x = g.call_method("reshape", (x, ()))
    if n is not None:
        x = g.call_function(torch.where, (g.call_function(operator.lt, (x, 0)),
                                          g.call_function(operator.add, (x, n)), x))
    return g.call_function(COMPARE[symbol], (x, k))


def _operand(args: tuple):
    """The literal second argument of a comparison (`(idx == 2)`), or None."""
    return args[1].value if len(args) > 1 and isinstance(args[1], Lit) else None


def _run(n: fx.Node, args):
    if n.op == "call_method":
        return getattr(args[0], n.target)(*args[1:])
    return n.target(*args)


def _scalar(ex) -> bool:
    return isinstance(ex, torch.Tensor) and ex.numel() == 1 and not ex.dtype.is_complex


def _integer(ex) -> bool:
    return ex.dtype == torch.bool or not ex.dtype.is_floating_point


def _holds(want, have) -> bool:
    """A 0-d region input of dtype `want.dtype` receives exactly the host's scalar read
    from `have`: the same kind (integer or float) and at least the same precision."""
    if not (isinstance(want, torch.Tensor) and want.dim() == 0):
        return False
    if _integer(have):
        return want.dtype == have.dtype
    return want.dtype.is_floating_point and want.dtype.itemsize >= have.dtype.itemsize


def _sink_reads(body: list, reads: set) -> None:
    """Move the host's scalar reads down to just before their first use in their block,
    past statements that neither use their value nor redefine what they read."""
    for s in body:
        for b in s.blocks():
            _sink_reads(b, reads)
    i = len(body) - 1
    while i >= 0:
        s = body[i]
        if isinstance(s, HostOp) and s.out in reads and (s.pure or s.expr.name == "range_index"):
            j = i  # a range check (`range(n)[i]`, raises) sinks, but runs before any exit
            while j + 1 < len(body) and not _touches(body[j + 1], s) and (
                    s.pure or not isinstance(body[j + 1], (Return, Break, Continue))):
                j += 1
            body.insert(j, body.pop(i))
        i -= 1


def _touches(stmt, read: HostOp) -> bool:
    uses = {v for x in walk([stmt]) for v in x.uses()}
    defs = {v for x in walk([stmt]) for v in x.defs()}
    return read.out in uses or bool(set(read.uses()) & defs) or read.out in defs
