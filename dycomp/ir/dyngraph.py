"""DynGraph: the control-flow graph of static regions that dycomp compiles.

The host program (structured statements, `program.py`) is the source of truth;
`cfg()` derives the networkx control-flow graph (region / branch / loop /
return nodes, live values on the edges) for inspection and tooling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from torch import fx

from dycomp.errors import DycompError
from dycomp.ir.program import (
    Break,
    CallRegion,
    Continue,
    If,
    Loop,
    Return,
    Stmt,
    Var,
    emit_python,
    walk,
)


class VerifyError(DycompError):
    """The DynGraph is malformed (a bug in dycomp or in a pass)."""


@dataclass
class Region:
    """A static subgraph: FX GraphModule with typed inputs and outputs."""

    name: str
    gm: fx.GraphModule | None
    lines: list = field(default_factory=list)  # source lines of the ops, "file.py:42"
    onnx: object = None  # onnx.ModelProto once lowered; the only form of fused regions
    traced: object = None  # fused: the model that also lists the regions it ran
    ran: list = field(default_factory=list)  # fused: the regions it can run, by id
    # fused: {"outline": the control flow it replaced, "regions": region -> source lines}
    fused: dict | None = None

    @property
    def placeholders(self) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if n.op == "placeholder"]

    @property
    def output_nodes(self) -> list:
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        return list(out.args[0])

    @property
    def arity(self) -> tuple[int, int]:
        if self.gm is None:
            return len(self.onnx.graph.input), len(self.onnx.graph.output)
        return len(self.placeholders), len(self.output_nodes)

    def signature(self) -> tuple[list, list]:
        """[(name, dtype, shape)] of inputs and outputs, from the traced examples."""
        if self.gm is None:
            return _onnx_sig(self.onnx.graph.input), _onnx_sig(self.onnx.graph.output)

        def sig(n):
            ex = n.meta.get("example") if isinstance(n, fx.Node) else None
            return (n.name if isinstance(n, fx.Node) else repr(n),
                    getattr(ex, "dtype", None), tuple(getattr(ex, "shape", ())))
        return [sig(n) for n in self.placeholders], [sig(n) for n in self.output_nodes]

    def op_count(self) -> int:
        if self.gm is None:
            return len(self.onnx.graph.node)
        return sum(n.op in ("call_function", "call_method", "call_module")
                   for n in self.gm.graph.nodes)

    def param_count(self) -> int:
        if self.gm is None:
            return sum(int(np.prod(t.dims)) for t in self.onnx.graph.initializer)
        return sum(p.numel() for p in self.gm.parameters()) + sum(
            b.numel() for b in self.gm.buffers())


@dataclass
class Applied:
    """One optimization a dynamic-aware pass applied, for `cm.explain()` and reports."""

    pass_name: str
    line: str  # source "file.py:42" of the construct it rewrote
    what: str
    saving: str  # estimated saving, in words ("~40 us per call with the gate off")

    def __str__(self) -> str:
        return f"{self.pass_name} at {self.line}: {self.what}; {self.saving}"


@dataclass
class DynGraph:
    regions: dict[str, Region]
    body: list[Stmt]
    params: list[Var]
    maybe_undef: set = field(default_factory=set)
    name: str = "forward"
    source: str = ""  # file:line of the compiled method
    applied: list = field(default_factory=list)  # Applied, by the dynamic-aware passes

    # -- views -------------------------------------------------------------------
    def host_source(self) -> str:
        return emit_python(self.body, self.params, header=self.host_header())

    def host_header(self) -> str:
        return f"# dycomp host program for {self.name} ({self.source})"

    def calls(self) -> list[CallRegion]:
        return [s for s in walk(self.body) if isinstance(s, CallRegion)]

    def stats(self) -> dict:
        stmts = list(walk(self.body))
        return {"regions": len(self.regions), "region_calls": len(self.calls()),
                "branches": sum(isinstance(s, If) for s in stmts),
                "loops": sum(isinstance(s, Loop) for s in stmts),
                "returns": sum(isinstance(s, Return) for s in stmts),
                "ops": sum(r.op_count() for r in self.regions.values())}

    def __str__(self) -> str:
        s = self.stats()
        lines = [f"DynGraph {self.name}: {s['regions']} regions, {s['branches']} branches, "
                 f"{s['loops']} loops, {s['returns']} returns"]
        for r in self.regions.values():
            ins, outs = r.signature()
            fmt = ", ".join(f"{n}:{_ty(d, sh)}" for n, d, sh in ins)
            fmo = ", ".join(f"{_ty(d, sh)}" for _, d, sh in outs)
            where = ", ".join(r.lines[:3]) + (" ..." if len(r.lines) > 3 else "")
            lines.append(f"  region {r.name}({fmt}) -> ({fmo})  {r.op_count()} ops  [{where}]")
        lines.append("host program:")
        lines += ["  " + ln for ln in self.host_source().splitlines()[5:]]
        return "\n".join(lines)

    def cfg(self) -> nx.DiGraph:
        """Control-flow graph: nodes are regions, branches, loops, returns; edges carry
        the live values (variables) the target uses."""
        g = nx.DiGraph()
        g.add_node("entry", kind="entry", defs=[p.name for p in self.params])
        _cfg_block(g, self.body, ["entry"], None)
        return g

    # -- checking --------------------------------------------------------------
    def verify(self) -> None:
        """Every value defined before use on every path; regions well formed and typed.

        Join (phi) variables are exempt: on paths that left a block early they stay
        unassigned, and the code reading them is guarded by the paths' exit flags."""
        for r in self.regions.values():
            _verify_region(r)
        called = set()
        for c in self.calls():
            r = self.regions.get(c.region)
            if r is None:
                raise VerifyError(f"call of unknown region {c.region} ({c.line})")
            called.add(c.region)
            n_in, n_out = r.arity
            if len(c.args) != n_in or len(c.outs) != n_out:
                raise VerifyError(f"{c.region} called with {len(c.args)} args/{len(c.outs)} "
                                  f"outs; it has {n_in}/{n_out}")
        unused = set(self.regions) - called
        if unused:
            raise VerifyError(f"regions never called: {sorted(unused)}")
        _check_defs(self.body, set(self.params), self.maybe_undef)


def _onnx_sig(values) -> list:
    from onnx import helper

    out = []
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in t.shape.dim)
        out.append((v.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims))
    return out


def _ty(dtype, shape) -> str:
    d = str(dtype).replace("torch.", "") if dtype is not None else "?"
    return f"{d}[{','.join(map(str, shape))}]"


def _verify_region(r: Region) -> None:
    if r.gm is None:
        if r.onnx is None:
            raise VerifyError(f"region {r.name} has neither an FX graph nor an ONNX model")
        return
    try:
        r.gm.graph.lint()
    except Exception as e:
        raise VerifyError(f"region {r.name}: {e}") from e
    for n in r.gm.graph.nodes:
        mod = getattr(n.target, "__module__", "") or ""
        if n.op == "call_function" and mod.startswith("dycomp.frontend.ops"):
            raise VerifyError(f"region {r.name} contains control flow ({n.target})")
    for n in r.placeholders + [x for x in r.output_nodes if isinstance(x, fx.Node)]:
        if not isinstance(n.meta.get("example"), torch.Tensor):
            raise VerifyError(f"region {r.name}: value {n.name} has no tensor type")


def _check_defs(body, defined: set, maybe: set):
    """Returns the set defined after the block, or None if the block never falls through."""
    defined = set(defined)
    for s in body:
        for v in s.uses():
            if v not in defined and v not in maybe:
                raise VerifyError(f"{v.name} used before it is defined on some path ({s.line})")
        if isinstance(s, If):
            outs = [_check_defs(b, defined, maybe) for b in (s.then, s.orelse)]
            live = [o for o in outs if o is not None]
            if not live:
                return None
            defined = set.intersection(*live)
        elif isinstance(s, Loop):
            inner = set(defined) | set(s.defs())
            _check_defs(s.body, inner, maybe)
        elif isinstance(s, (Break, Continue, Return)):
            return None
        defined |= set(s.defs())
    return defined


def _cfg_block(g, body, preds, loop_head):
    for s in body:
        nid = f"{type(s).__name__.lower()}_{id(s)}"
        if not isinstance(s, (CallRegion, If, Loop, Return)):
            continue
        label = (s.region if isinstance(s, CallRegion) else
                 f"if {s.cond.name}" if isinstance(s, If) else type(s).__name__.lower())
        g.add_node(nid, kind=type(s).__name__, label=label, line=s.line,
                   defs=[v.name for v in s.defs()])
        for p in preds:
            g.add_edge(p, nid, values=[v.name for v in s.uses()])
        preds = [nid]
        if isinstance(s, If):
            preds = _cfg_block(g, s.then, [nid], loop_head) + _cfg_block(g, s.orelse, [nid],
                                                                           loop_head)
        elif isinstance(s, Loop):
            tails = _cfg_block(g, s.body, [nid], nid)
            for t in tails:
                g.add_edge(t, nid, values=[], back=True)
        elif isinstance(s, Return):
            return []
    return preds
