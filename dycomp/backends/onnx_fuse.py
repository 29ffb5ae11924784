"""FuseBranchesIntoOnnx: lower host branches into ONNX `If` nodes.

ONNX Runtime costs ~5-8 us per `run()` call, more than many small regions compute, so
a gated network that dispatches one region per gate is dominated by dispatch. A run
of host statements made only of region calls, `bool(tensor)` conditions, branches
whose arms are such runs again, and phi assignments of tensors is rewritten into ONE
ONNX model: each region is inlined and each branch becomes an `If` node (ONNX Runtime
executes only the taken arm, so no work is added).

Cost rule (measured here, see benchmarks/README.md): an `If` node costs ~1 us inside a
session against ~6 us for a host-dispatched region call, so every structurally
fusable branch is fused. Host dispatch stays for early returns, loops and breaks.
Branches that also choose a Python int or bool (a branch id, a flag) are fused too:
the literal becomes a constant tensor inside the model and the host converts the
model's output back (`branch = int(branch__t)`).
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper

from dycomp.ir.dyngraph import Region
from dycomp.ir.program import Assign, CallRegion, HostOp, If, Lit, Op, Var, walk
from dycomp.passes.regions import tensor_vars

log = logging.getLogger(__name__)


def fuse_branches(graph) -> int:
    """Rewrite fusable runs of `graph.body` into fused ONNX regions; returns how many
    branches were lowered into `If` nodes. Regions must carry `.onnx` models."""
    tensors = tensor_vars(graph)
    uses = Counter(v for s in walk(graph.body) for v in s.uses())
    fuser = _Fuser(graph, tensors, uses, literal_vars(graph))
    fuser.block(graph.body)
    live = {s.region for s in walk(graph.body) if isinstance(s, CallRegion)}
    for name in [n for n in graph.regions if n not in live]:
        del graph.regions[name]
    return fuser.fused_ifs


def literal_vars(graph) -> dict:
    """Host variables only ever assigned Python int or bool literals (or each other):
    {var: TensorProto element type}."""
    defs: dict = {}
    for s in walk(graph.body):
        if isinstance(s, Assign):
            for d, x in zip(s.dsts, s.srcs):
                defs.setdefault(d, []).append(x)
        else:
            for d in s.defs():
                defs.setdefault(d, []).append(None)  # defined some other way
    for p in graph.params:
        defs.setdefault(p, []).append(None)
    kinds: dict = {}
    changed = True
    while changed:
        changed = False
        for d, srcs in defs.items():
            found = {_literal_kind(x, kinds) for x in srcs}
            if d not in kinds and len(found) == 1 and None not in found:
                kinds[d] = found.pop()
                changed = True
    return kinds


def _literal_kind(x, kinds):
    if isinstance(x, Lit) and isinstance(x.value, bool):
        return TensorProto.BOOL
    if isinstance(x, Lit) and type(x.value) is int and -2**63 <= x.value < 2**63:
        return TensorProto.INT64
    return kinds.get(x) if isinstance(x, Var) else None


class _Fuser:
    def __init__(self, graph, tensors, uses, literals):
        self.graph, self.tensors, self.uses = graph, tensors, uses
        self.literals = literals
        self.fused_ifs = 0
        self.count = 0

    # -- which statements can go into one ONNX model ---------------------------------
    def ok(self, s) -> bool:
        if isinstance(s, CallRegion):
            r = self.graph.regions[s.region]
            return r.onnx is not None and not _has_subgraphs(r.onnx)
        if isinstance(s, HostOp):
            return (s.out is not None and s.expr.fmt == "bool({0})" and len(s.uses()) == 1
                    and s.uses()[0] in self.tensors)
        if isinstance(s, Assign):
            return all((d in self.tensors and isinstance(x, Var) and x in self.tensors)
                       or d in self.literals for d, x in zip(s.dsts, s.srcs))
        if isinstance(s, If):
            return all(self.ok(x) for x in s.then + s.orelse) and self._arms_closed(s)
        return False

    def _phis(self, s: If):
        then = {d: x for a in s.then if isinstance(a, Assign) for d, x in zip(a.dsts, a.srcs)}
        other = {d: x for a in s.orelse if isinstance(a, Assign)
                 for d, x in zip(a.dsts, a.srcs)}
        return then, other

    def _arms_closed(self, s: If) -> bool:
        """Both arms assign the same phi variables, and nothing else defined in an arm is
        used outside it."""
        then, other = self._phis(s)
        if set(then) != set(other):
            return False
        for arm in (s.then, s.orelse):
            inner = Counter(v for x in walk(arm) for v in x.uses())
            for x in walk(arm):
                for d in x.defs():
                    if d not in then and self.uses[d] > inner[d]:
                        return False
        return True

    # -- rewriting ------------------------------------------------------------------------
    def block(self, body: list) -> None:
        for s in body:
            for b in s.blocks():
                self.block(b)
        out, run = [], []
        for s in body + [None]:
            if s is not None and self.ok(s):
                run.append(s)
                continue
            tail = []  # conditions for a branch left on the host: tested after the call
            while run and isinstance(run[-1], HostOp):
                tail.insert(0, run.pop())
            out += (self.fuse(run) if _worth(run) else run) + tail
            run = []
            if s is not None:
                out.append(s)
        body[:] = out

    def fuse(self, run: list) -> list:
        defined = {d for s in walk(run) for d in s.defs()}
        used_in = Counter(v for s in walk(run) for v in s.uses())
        inputs = list(dict.fromkeys(v for s in walk(run) for v in s.uses()
                                    if v not in defined))
        outputs = [d for d in dict.fromkeys(defined) if self.uses[d] > used_in[d]]
        if any(d not in self.tensors and d not in self.literals for d in outputs):
            return run
        self.count += 1
        name = f"f{self.count}"
        b = _OnnxBuilder(self.graph, name)
        try:
            model = b.model(run, inputs, outputs)
        except _CannotFuse as e:
            log.debug("not fusing %d statements at %s: %s", len(run), run[0].line, e)
            return run
        self.fused_ifs += sum(isinstance(s, If) for s in walk(run))
        lines = list(dict.fromkeys(ln for s in walk(run) if isinstance(s, CallRegion)
                                   for ln in self.graph.regions[s.region].lines))
        self.graph.regions[name] = Region(name, None, lines, onnx=model)
        outs = [Var(f"{d.name}__t") if d in self.literals else d for d in outputs]
        back = [HostOp(d, Op("bool({0})" if self.literals[d] == TensorProto.BOOL
                             else "int({0})", (t,)), line=run[0].line)
                for d, t in zip(outputs, outs) if d in self.literals]
        return [CallRegion(name, inputs, outs, line=run[0].line)] + back


# Arms whose weights hold at most this many elements (and no convolution, recurrent cell
# or nested control flow) are both computed and selected with `Where`: an `If` node costs
# ~2 us in ONNX Runtime here, about what a batch-1 matmul over this many weights costs.
SPECULATE_MAX_WEIGHTS = 8192
_HEAVY = {"Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Loop", "If", "Scan"}


def _speculate(arms) -> bool:
    weights = sum(int(np.prod(t.dims)) for _, inits, _ in arms for t in inits)
    heavy = any(n.op_type in _HEAVY for nodes, _, _ in arms for n in nodes)
    same = all(a.type == b.type for a, b in zip(arms[0][2], arms[1][2]))
    # ONNX Runtime's CPU `Where` has no bool kernel (a flag the branch chooses)
    same &= all(a.type.tensor_type.elem_type != TensorProto.BOOL for a in arms[0][2])
    return weights <= SPECULATE_MAX_WEIGHTS and not heavy and same


def _worth(run) -> bool:
    return sum(isinstance(s, CallRegion) for s in walk(run)) >= 2 and any(
        isinstance(s, If) for s in run)


def _has_subgraphs(model) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in model.graph.node for a in n.attribute)


class _CannotFuse(Exception):
    pass


class _OnnxBuilder:
    """Builds one ONNX model from a run of host statements."""

    def __init__(self, graph, name):
        self.graph, self.name = graph, name
        self.types: dict[str, onnx.TypeProto] = {}
        self.initializers: list = []
        self.k = 0

    def model(self, run, inputs, outputs) -> onnx.ModelProto:
        nodes = self.stmts(run)
        first = self.graph.regions[next(s.region for s in walk(run)
                                        if isinstance(s, CallRegion))].onnx
        ins = [helper.make_value_info(v.name, self._type(v.name)) for v in inputs]
        outs = [helper.make_value_info(v.name, self._type(v.name)) for v in outputs]
        g = helper.make_graph(nodes, self.name, ins, outs, self.initializers)
        m = helper.make_model(g, opset_imports=list(first.opset_import))
        m.ir_version = first.ir_version
        try:
            onnx.checker.check_model(m)
        except onnx.checker.ValidationError as e:
            raise _CannotFuse(str(e)) from e
        return m

    def _type(self, name) -> onnx.TypeProto:
        if name not in self.types:
            raise _CannotFuse(f"unknown type of {name}")
        return self.types[name]

    def stmts(self, run) -> list:
        nodes = []
        for s in run:
            if isinstance(s, CallRegion):
                nodes += self.inline(self.graph.regions[s.region].onnx,
                                     [v.name for v in s.args], [v.name for v in s.outs])
            elif isinstance(s, HostOp):
                src = s.uses()[0].name
                nodes.append(helper.make_node("Cast", [src], [s.out.name], to=TensorProto.BOOL,
                                              name=f"{s.out.name}_cond"))
                t = onnx.TypeProto()
                t.CopyFrom(self._type(src))
                t.tensor_type.elem_type = TensorProto.BOOL
                self.types[s.out.name] = t
            elif isinstance(s, Assign):
                for d, x in zip(s.dsts, s.srcs):
                    nodes.append(self.value(x, d.name))
                    self.types[d.name] = self.type_of(x)
            elif isinstance(s, If):
                nodes += self.if_node(s)
        return nodes

    def if_node(self, s: If) -> list:
        """An `If` node, or both arms and a `Where` when they are cheaper than an `If`."""
        then_map = {d: x for a in s.then if isinstance(a, Assign) for d, x in zip(a.dsts, a.srcs)}
        phis = list(then_map)
        arms = [self._arm(arm, tag, phis) for arm, tag in ((s.then, "then"),
                                                           (s.orelse, "else"))]
        for d in phis:
            self.types[d.name] = self.type_of(then_map[d])
        if _speculate(arms):
            nodes = []
            for arm_nodes, inits, _ in arms:
                nodes += arm_nodes
                self.initializers += inits
            for d, a, b in zip(phis, arms[0][2], arms[1][2]):
                nodes.append(helper.make_node("Where", [s.cond.name, a.name, b.name], [d.name]))
            return nodes
        branches = [helper.make_graph(n, f"{self.name}_{tag}{self._next()}", [], outs,
                                      initializer=inits)
                    for (n, inits, outs), tag in zip(arms, ("then", "else"))]
        return [helper.make_node("If", [s.cond.name], [d.name for d in phis],
                                 then_branch=branches[0], else_branch=branches[1],
                                 name=f"if_{s.cond.name}")]

    def _arm(self, arm, tag, phis):
        """Nodes, initializers (an arm's weights live in the arm) and outputs of one arm."""
        body = [x for x in arm if not isinstance(x, Assign)]
        srcs = {d: x for a in arm if isinstance(a, Assign) for d, x in zip(a.dsts, a.srcs)}
        outer, self.initializers = self.initializers, []
        nodes = self.stmts(body)
        inits, self.initializers = self.initializers, outer
        outs = []
        for d in phis:
            o = f"{d.name}__{tag}{self._next()}"
            nodes.append(self.value(srcs[d], o))
            outs.append(helper.make_value_info(o, self.type_of(srcs[d])))
        return nodes, inits, outs

    def value(self, x, out: str):
        """A node computing `out` from a host variable or a Python literal."""
        if isinstance(x, Lit):
            t = self.type_of(x).tensor_type.elem_type
            value = helper.make_tensor(f"{out}_value", t, [], [int(x.value)])
            return helper.make_node("Constant", [], [out], value=value)
        return helper.make_node("Identity", [x.name], [out])

    def type_of(self, x) -> onnx.TypeProto:
        if isinstance(x, Lit):
            kind = _literal_kind(x, {})
            if kind is None:
                raise _CannotFuse(f"literal {x.value!r} is not an int or bool")
            return helper.make_tensor_type_proto(kind, [])
        return self._type(x.name)

    def _next(self) -> int:
        self.k += 1
        return self.k

    def inline(self, model, args, outs) -> list:
        """The region's nodes with its inputs/outputs renamed to host variables and its
        internal names made unique."""
        g = model.graph
        prefix = f"{self.name}_{self._next()}_"
        rename = {i.name: a for i, a in zip(g.input, args)}
        for i, a in zip(g.input, args):
            self.types.setdefault(a, i.type)
        nodes = []
        for o, name in zip(g.output, outs):
            self.types[name] = o.type
            if o.name in rename:  # the region returns one of its inputs unchanged
                nodes.append(helper.make_node("Identity", [rename[o.name]], [name]))
            else:
                rename[o.name] = name
        for init in g.initializer:
            new = onnx.TensorProto()
            new.CopyFrom(init)
            new.name = prefix + init.name
            rename[init.name] = new.name
            self.initializers.append(new)

        def ren(x):
            if not x:
                return x
            if x not in rename:
                rename[x] = prefix + x
            return rename[x]

        for n in g.node:
            new = onnx.NodeProto()
            new.CopyFrom(n)
            new.name = prefix + n.name
            del new.input[:]
            del new.output[:]
            new.input.extend(ren(x) for x in n.input)
            new.output.extend(ren(x) for x in n.output)
            nodes.append(new)
        return nodes

