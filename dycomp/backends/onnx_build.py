"""One ONNX model from a run of host statements: regions inlined, Python scalar host ops
as ONNX ops, branches as `If` (or both arms and `Where`), loops as `Loop`.

Host variables map to ONNX values through an environment, so a variable assigned
several times (a loop counter, a phi) gets a fresh ONNX name at each definition, and
an assignment `a = b` costs no node. Python scalars are 0-d tensors: int -> int64,
float -> double (the host's own precision: results are bit-exact), bool -> bool.

The model is built *traced* (`dycomp.runtime.onnx_paths`): one more output lists the
ids of the regions it ran (`Builder.ran` names them), so that a fused subgraph reports
the same path as the host program it replaces; `drop_path` gives the model that runs
by default.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dycomp.backends.onnx_conditions import (
    GUARDS,
    MARK,
    carry_unsqueezed,
    drop_condition_reshapes,
    drop_noop_reshapes,
)
from dycomp.backends.onnx_switch import SWITCH, gather_switches
from dycomp.backends.onnx_tables import RANDOM_OPS, tabulate
from dycomp.backends.onnx_where import bool_wheres
from dycomp.ir.program import Assign, CallRegion, HostOp, If, Lit, Loop, Var, float32_bound, walk
from dycomp.runtime.onnx_paths import PATH_OUTPUT, constant_tensor, drop_dead

INT64, DOUBLE, BOOL = TensorProto.INT64, TensorProto.DOUBLE, TensorProto.BOOL
FLOAT = TensorProto.FLOAT
_IDS = helper.make_tensor_type_proto(INT64, [None])  # a list of region ids
_FLOATS = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Tensor:
    """A tensor operand of a host op (its ONNX element type)."""

    elem: int


_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul"}  # host operators (runtime/hostops.py)
_COMPARE = {"lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
            "eq": "Equal", "ne": "Equal"}
_MIRROR = {"Less": "Greater", "Greater": "Less", "LessOrEqual": "GreaterOrEqual",
           "GreaterOrEqual": "LessOrEqual"}  # `c < x` is `x > c`
_SYMBOL = {"Less": "<", "LessOrEqual": "<=", "Greater": ">", "GreaterOrEqual": ">="}
_CONVERT = {"int": INT64, "float": DOUBLE, "bool": BOOL}
_ITEM = {"item": None, "int_item": INT64, "float_item": DOUBLE}


def item_kind(elem: int) -> int:
    """The kind of `tensor.item()`: a Python float, int or bool."""
    return DOUBLE if elem in _FLOATS else BOOL if elem == BOOL else INT64


def literal_kind(value) -> int | None:
    if isinstance(value, bool):
        return BOOL
    if type(value) is int and -2**63 <= value < 2**63:
        return INT64
    return DOUBLE if type(value) is float else None


def op_kind(op: str, operands: list) -> int | None:
    """The Python scalar kind host operator `op` yields, or None if it is not lowered to
    ONNX. `operands`: scalar kinds, or `Tensor` for tensor operands."""
    scalars = all(k in (INT64, DOUBLE, BOOL) for k in operands)
    numbers = all(k in (INT64, DOUBLE) for k in operands)
    if op in _ITEM:
        (a,) = operands
        return (_ITEM[op] or item_kind(a.elem)) if isinstance(a, Tensor) else None
    if op == "bool":
        return BOOL if operands[0] is not None else None
    if op in _CONVERT:
        return _CONVERT[op] if scalars else None
    if op in _ARITH and numbers:
        return DOUBLE if DOUBLE in operands else INT64
    if op in _COMPARE and (numbers or (op in ("eq", "ne") and operands == [BOOL] * 2)):
        return BOOL
    if op == "eq" and operands[1] == INT64 and operands[0] == BOOL:  # a switch case
        return BOOL
    if op == "not":
        return BOOL if scalars else None
    if op == "none_of":
        return BOOL if operands == [BOOL] * len(operands) else None
    if op == "shape":
        return INT64 if isinstance(operands[0], Tensor) and operands[1] == INT64 else None
    if op == "range_index":  # a switch's index: Gather from arange(n)
        return INT64 if operands == [INT64, INT64] else None
    return None


def branch_phis(s: If, uses: Counter, live: set) -> list[list[Var]]:
    """Per arm, the variables it defines that are used after it (or are in `live`)."""
    out = []
    for arm in (s.then, s.orelse):
        inner = Counter(v for x in walk(arm) for v in x.uses())
        defs = dict.fromkeys(d for x in walk(arm) for d in x.defs())
        out.append(sorted((d for d in defs if uses[d] > inner[d] or d in live),
                          key=lambda v: v.name))
    return out


class CannotFuse(Exception):
    pass


# A loop known to run at least once has its first iteration copied before the `Loop`
# (ONNX Runtime's `Loop` node and iteration cost about a third of act's one-step path:
# 29.1 -> 24.0 us peeled), if the copy adds at most this many weights.
PEEL_MAX_WEIGHTS = 65_536

# Arms whose weights hold at most this many elements together (and no convolution,
# recurrent cell or nested control flow) are both computed and selected with `Where`: an
# `If` node costs ~1 us in ONNX Runtime here, about what batch-1 matmuls over this many
# weights cost (measured in benchmarks/README.md: nested_if 0.031 ms with 4,224 weights
# speculated, 0.025 ms with an `If` there).
SPECULATE_MAX_WEIGHTS = 2048
_HEAVY = {"Conv", "ConvTranspose", "LSTM", "GRU", "RNN", "Loop", "If", "Scan"}


def _speculate(arms) -> bool:
    weights = sum(int(np.prod(t.dims)) for _, inits, _ in arms for t in inits)
    heavy = any(n.op_type in _HEAVY for nodes, _, _ in arms for n in nodes)
    same = all(a.type == b.type for a, b in zip(arms[0][2], arms[1][2]))
    # ONNX Runtime's CPU `Where` has no bool kernel (a flag the branch chooses)
    same &= all(a.type.tensor_type.elem_type != BOOL for a in arms[0][2])
    return weights <= SPECULATE_MAX_WEIGHTS and not heavy and same


def _negated_flags(nodes: list, outs: list, first: int) -> list[bool]:
    """Per append of a `Loop` body whose outputs from `first` on are (value, taken) pairs:
    whether its taken flag is now output negated. A flag that is the `Not` of a value the
    body computes, and so far output twice (it is the loop's condition too: no `break`
    yet) through an `Identity`, is output as that value, the `Identity` dropped: one node
    less per iteration (decoder 0.989), the host negating the flags once."""
    made = {o: n for n in nodes for o in n.output}
    names = {o.name for o in outs}
    negated = []
    for j in range(first + 1, len(outs), 2):
        copy = made.get(outs[j].name)
        neg = made.get(copy.input[0]) if copy is not None and copy.op_type == "Identity" \
            else None
        ok = neg is not None and neg.op_type == "Not" and neg.input[0] in made \
            and neg.input[0] not in names
        if ok:
            nodes.remove(copy)
            outs[j] = helper.make_value_info(neg.input[0], outs[j].type)
            names.add(neg.input[0])
        negated.append(ok)
    return negated


def _elem_type(t: onnx.TypeProto) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(t.tensor_type.elem_type, None)


def _scalar(kind: int) -> onnx.TypeProto:
    return helper.make_tensor_type_proto(kind, [])


class Builder:
    """Statements -> nodes of one ONNX model (see the module docstring).

    `types`: ONNX types of host tensor variables (`onnx_fuse.var_types`); `kinds`: the
    scalar kind of Python-scalar variables; `uses`: uses of each variable in the whole
    program; `plans`: `LoopPlan` of each loop to lower, by `id`."""

    def __init__(self, graph, name, types, kinds, uses, plans):
        self.graph, self.name = graph, name
        self.var_types, self.kinds, self.uses, self.plans = types, kinds, uses, plans
        self.env: dict[Var, str] = {}
        self.types: dict[str, onnx.TypeProto] = {}
        self.taken: set[str] = set()
        self.truth: dict[str, bool] = {}  # bool constants
        self.consts: dict[str, object] = {}  # every constant's value
        self.negation: dict[str, str] = {}  # Not(x) -> x
        self.widened: dict[str, str] = {}  # a float32 cast to a Python float -> the float32
        self.memo: dict[tuple, str] = {}  # (op, inputs) -> output, of this scope
        self.trace: list = []  # the regions this scope ran: ids, and names of id lists
        self.ran: list[str] = []  # region names, by id
        self.nodes: list = []
        self.initializers: list = []
        self.live: set = set()  # loop-carried and synthetic variables of enclosing loops
        # an appended value of the loops being built -> its flag: read only where set
        self.scan_flags: dict = {}
        self.depth = 0
        # (Append, scan value, scan taken, whether the taken scan holds its negation) of
        # top-level loops
        self.appends: list = []
        self.k = 0
        # check-only builds (`dycomp/check_fused.py`): decision variable -> its source
        # line; each such decision's value goes through a marker node (`mark`)
        self.marks: dict = {}
        self.unmarked: dict = {}  # marker output -> the name it marks (for node names)
        self.guards: dict = {}  # marker node -> [(condition, arm)] of speculated arms

    # -- the model --------------------------------------------------------------------------
    def model(self, run, inputs, outputs) -> onnx.ModelProto:
        ins = []
        for v in inputs:
            t = _scalar(self.kinds[v]) if v in self.kinds else self.var_types.get(v)
            if t is None:
                raise CannotFuse(f"unknown type of {v}")
            self.taken.add(v.name)
            self.env[v], self.types[v.name] = v.name, t
            ins.append(helper.make_value_info(v.name, t))
        self.stmts(run)
        names = [self.lookup(v) for v in outputs] + [
            n for _, value, taken, _ in self.appends for n in (value, taken)]
        self.nodes.append(helper.make_node("Identity", [self.joined(self.trace)],
                                           [PATH_OUTPUT], name=PATH_OUTPUT))
        outs, seen = [], {v.name for v in inputs}
        for n in names:
            if n in seen:  # an output twice, or an input returned as it is
                n = self.node("Identity", [n], like=n)
            seen.add(n)
            outs.append(helper.make_value_info(n, self.types[n]))
        outs.append(helper.make_value_info(PATH_OUTPUT, _IDS))
        g = helper.make_graph(self.nodes, self.name, ins, outs, self.initializers)
        carry_unsqueezed(g)
        dedupe(g)  # first: a switch's cases then read one index
        if gather_switches(g):
            dedupe(g)  # the constants the gathered copies brought out of their arms
        drop_condition_reshapes(g)
        drop_dead(g)
        first = self.graph.regions[next(s.region for s in walk(run)
                                        if isinstance(s, CallRegion))].onnx
        m = helper.make_model(g, opset_imports=list(first.opset_import))
        if self.guards:
            helper.set_model_props(m, {GUARDS: json.dumps(self.guards)})
        m.ir_version = first.ir_version
        if drop_noop_reshapes(m):
            drop_dead(m.graph)
        bool_wheres(m)  # an arm's boolean values selected: a kernel ONNX Runtime lacks
        _check(m)
        return m

    # -- names and nodes --------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name = base
        while name in self.taken:
            self.k += 1
            name = f"{base}__{self.k}"
        self.taken.add(name)
        return name

    def lookup(self, v: Var) -> str:
        if v not in self.env:
            raise CannotFuse(f"{v} is not defined in the fused statements")
        return self.env[v]

    def node(self, op: str, inputs: list, out: str = "t", like: str | None = None,
             kind: int | None = None, **attrs) -> str:
        """Append one node; returns its output's name. Its type is `like`'s, or the scalar
        `kind` (none: unknown, for nodes whose output no one asks about)."""
        name = self.fresh(f"{self.name}_{out}")
        self.nodes.append(helper.make_node(op, inputs, [name], name=f"n_{name}", **attrs))
        if like is not None:
            self.types[name] = self.types[like]
        elif kind is not None:
            self.types[name] = _scalar(kind)
        return name

    def const(self, value, kind: int) -> str:
        t = numpy_helper.from_array(np.array(value, helper.tensor_dtype_to_np_dtype(kind)))
        out = self.node("Constant", [], "c", kind=kind, value=t)
        if kind == BOOL:
            self.truth[out] = bool(value)
        self.consts[out] = value
        return out

    def joined(self, pieces: list) -> str:
        """Region ids and id lists, in order, as one list of ids."""
        parts, ids = [], []
        for p in pieces:
            if isinstance(p, int):
                ids.append(p)
                continue
            if ids:
                parts.append(self.const(ids, INT64))
                ids = []
            parts.append(p)
        if ids or not parts:
            parts.append(self.const(ids, INT64))
        if len(parts) == 1:
            self.types[parts[0]] = _IDS
            return parts[0]
        out = self.node("Concat", parts, "path", axis=0)
        self.types[out] = _IDS
        return out

    def arm_path(self) -> str:
        """The regions the scope being built ran (a `results` entry of `subgraph`)."""
        return self.joined(self.trace)

    def logic(self, op: str, *args: str) -> str:
        """`Not`, `And` or `Or` of bool scalars, folded where an operand is a constant
        (`x and True` is `x`) or the negation of a negation."""
        if op == "Not":
            (x,) = args
            if x in self.truth:
                return self.const(not self.truth[x], BOOL)
            if x in self.negation:
                return self.negation[x]
            if ("Not", x) not in self.memo:
                self.memo["Not", x] = self.node("Not", [x], kind=BOOL)
                self.negation[self.memo["Not", x]] = x
            return self.memo["Not", x]
        absorbing = op == "Or"  # True decides an `Or`, False an `And`
        if any(self.truth.get(x) is absorbing for x in args):
            return self.const(absorbing, BOOL)
        rest = [x for x in args if x not in self.truth]
        if not rest:
            return self.const(not absorbing, BOOL)
        out = rest[0]
        for x in rest[1:]:
            if (op, out, x) not in self.memo:
                self.memo[op, out, x] = self.node(op, [out, x], kind=BOOL)
            out = self.memo[op, out, x]
        return out

    def elem(self, name: str) -> int:
        return self.types[name].tensor_type.elem_type

    def scalar(self, name: str, tag: str) -> str:
        """`name`, a one-element tensor, as a 0-d tensor (no node when it is one)."""
        t = self.types[name].tensor_type
        if t.HasField("shape") and not t.shape.dim:
            return name
        if ("Reshape", name) not in self.memo:
            out = self.node("Reshape", [name, self.const([], INT64)], tag)
            self.types[out] = _scalar(t.elem_type)
            self.memo["Reshape", name] = out
        return self.memo["Reshape", name]

    def cast(self, name: str, kind: int) -> str:
        if self.elem(name) == kind:
            return name
        t = onnx.TypeProto()
        t.CopyFrom(self.types[name])
        t.tensor_type.elem_type = kind
        out = self.node("Cast", [name], "cast", to=kind)
        self.types[out] = t
        if kind == DOUBLE and self.elem(name) == FLOAT:
            self.widened[out] = name
        return out

    def operand(self, x, kind: int) -> str:
        if isinstance(x, Lit):
            return self.const(x.value, kind)
        return self.cast(self.lookup(x), kind)

    # -- statements -------------------------------------------------------------------------
    def stmts(self, stmts: list) -> None:
        for s in stmts:
            if isinstance(s, CallRegion):
                self.inline(s)
            elif isinstance(s, HostOp):
                self.env[s.out] = self.mark(s, self.host_op(s))
            elif isinstance(s, Assign):
                srcs = [self.assigned(d, x) for d, x in zip(s.dsts, s.srcs)]
                self.env.update(zip(s.dsts, srcs))
            elif isinstance(s, If):
                self.if_node(s)
            elif isinstance(s, Loop):
                self.loop_node(self.plans[id(s)])
            else:
                raise CannotFuse(f"cannot lower {type(s).__name__} at {s.line}")

    def assigned(self, d: Var, x) -> str:
        if d in self.kinds and isinstance(x, Var) and x not in self.kinds:  # a bool tensor
            return self.cast(self.scalar(self.lookup(x), "bool"), self.kinds[d])
        if not isinstance(x, Lit):
            return self.lookup(x)
        if d in self.kinds:
            return self.const(x.value, self.kinds[d])
        return self.const(x.value, self.var_types[d].tensor_type.elem_type)  # fed to regions

    def host_op(self, s: HostOp) -> str:
        if isinstance(s.expr, _Target):  # start + step * iteration
            e = s.expr
            t = e.it if e.step == 1 else self.node("Mul", [e.it, self.const(e.step, INT64)],
                                                   kind=INT64)
            return t if e.start == 0 else self.node("Add", [t, self.const(e.start, INT64)],
                                                    kind=INT64)
        fmt, args = s.expr.name, s.expr.args
        kind = self.kinds.get(s.out, BOOL)
        if fmt in _CONVERT:
            return self.cast(self.lookup(args[0]), kind)
        if fmt in _ITEM:
            return self.cast(self.scalar(self.lookup(args[0]), "item"), kind)
        if fmt in _ARITH:
            return self.node(_ARITH[fmt], [self.operand(a, kind) for a in args], kind=kind)
        if fmt in _COMPARE:
            both = [self.kinds.get(a) or literal_kind(getattr(a, "value", None)) for a in args]
            k = BOOL if both == [BOOL, BOOL] else DOUBLE if DOUBLE in both else INT64
            if k == DOUBLE and (narrow := self.float32_compare(_COMPARE[fmt], args)):
                return narrow
            out = self.node(_COMPARE[fmt], [self.operand(a, k) for a in args], kind=BOOL)
            return self.logic("Not", out) if fmt == "ne" else out
        if fmt == "not":
            return self.logic("Not", self.operand(args[0], BOOL))
        if fmt == "shape" and isinstance(args[1], Lit):
            d = args[1].value
            dim = self.node("Shape", [self.lookup(args[0])], "dim", start=d, end=d + 1)
            self.types[dim] = helper.make_tensor_type_proto(INT64, [1])
            return self.scalar(dim, "dim")
        if fmt == "none_of":
            return self.logic("Not", self.logic("Or", *(self.operand(a, BOOL) for a in args)))
        if fmt == "range_index" and isinstance(args[0], Lit):  # out of range: Gather fails
            table = numpy_helper.from_array(np.arange(args[0].value, dtype=np.int64))
            return self.node("Gather", [self.node("Constant", [], "c", value=table),
                                        self.operand(args[1], INT64)], kind=INT64)
        raise CannotFuse(f"host operation {fmt} at {s.line}")

    def mark(self, s: HostOp, name: str) -> str:
        """`name`, or in a check-only build, for a decision in `marks`, an `Identity` of
        it named `MARK:<site>:<i>`: what the path check forces (`check_fused`)."""
        if s.out not in self.marks:
            return name
        i = len(self.taken)  # grows with every name: unique
        out = f"{self.name}_{MARK}{i}"
        self.taken.add(out)
        self.nodes.append(helper.make_node("Identity", [name], [out],
                                           name=f"{MARK}:{self.marks[s.out]}:{i}"))
        if name in self.types:
            self.types[out] = self.types[name]
        self.unmarked[out] = name
        return out

    def guard(self, nodes: list, cond: str, taken: bool) -> None:
        """Markers among the nodes of an arm computed whether or not taken (speculated):
        their decision counts only where `cond` is `taken` (`GUARDS`)."""
        for n in nodes:
            if n.name.startswith(MARK):
                self.guards.setdefault(n.name, []).append([cond, taken])

    def float32_compare(self, op: str, args: list) -> str | None:
        """`x < c` for a float32 `x` read as a Python float and a number `c`, computed in
        float32 without casting `x` (`float32_bound`); two such reads compare as their
        float32s. None: not that case."""
        if op not in _MIRROR:
            return None
        if isinstance(args[0], Lit):
            args, op = args[::-1], _MIRROR[op]
        x, c = (self.widened.get(self.lookup(a)) if isinstance(a, Var) else a for a in args)
        if isinstance(x, str) and isinstance(c, str):  # two float32 reads
            return self.node(op, [x, c], kind=BOOL)
        if not (isinstance(x, str) and isinstance(c, Lit)):
            return None
        bound = float32_bound(_SYMBOL[op], c.value)
        return None if bound is None else self.node(op, [x, self.const(bound, FLOAT)], kind=BOOL)

    def inline(self, s: CallRegion) -> None:
        """The region's nodes, inputs bound to the arguments and names made unique."""
        g = self.graph.regions[s.region].onnx.graph
        if s.region not in self.ran:
            self.ran.append(s.region)
        self.trace.append(self.ran.index(s.region))
        self.k += 1
        prefix = f"{self.name}_{self.k}_"
        rename = {}
        for i, a in zip(g.input, s.args):
            rename[i.name] = self.cast(self.lookup(a), i.type.tensor_type.elem_type)
        for init in g.initializer:
            new = onnx.TensorProto()
            new.CopyFrom(init)
            new.name = rename[init.name] = prefix + init.name
            self.initializers.append(new)

        def ren(x):
            if x and x not in rename:
                rename[x] = prefix + x
                self.taken.add(rename[x])
            return rename.get(x, x)

        for n in g.node:
            new = onnx.NodeProto()
            new.CopyFrom(n)
            new.name = prefix + n.name
            del new.input[:]
            del new.output[:]
            new.input.extend(ren(x) for x in n.input)
            new.output.extend(ren(x) for x in n.output)
            self.nodes.append(new)
        for o, v in zip(g.output, s.outs):
            name = ren(o.name)
            self.types.setdefault(name, o.type)
            self.env[v] = name

    # -- control flow -----------------------------------------------------------------------
    def subgraph(self, stmts: list, results: list, inputs=()) -> tuple:
        """Build `stmts` as a subgraph: (nodes, initializers, outputs). `results` are
        names computed inside it (callables, run after the statements) or variables."""
        saved = self.env.copy(), self.memo.copy(), self.trace, self.nodes, self.initializers
        self.nodes, self.initializers, self.trace = [], [], []
        self.depth += 1
        try:
            for name, v, t in inputs:
                self.types[name] = t
                if v is not None:
                    self.env[v] = name
            self.stmts(stmts)
            outs = []
            for r in results:
                src = r() if callable(r) else self.lookup(r)
                outs.append(src)
            # a value computed here is an output as it is; one from outside (or an
            # output twice) goes through an `Identity`
            made = {o for n in self.nodes for o in n.output}
            for i, src in enumerate(outs):
                if src not in made or src in outs[:i]:
                    outs[i] = self.node("Identity", [src], "out", like=src)
            return self.nodes, self.initializers, [
                helper.make_value_info(o, self.types[o]) for o in outs]
        finally:
            self.depth -= 1
            self.env, self.memo, self.trace, self.nodes, self.initializers = saved

    def if_node(self, s: If) -> None:
        """An `If` node, or both arms and a `Where` when they are cheaper than an `If`."""
        phis, other = branch_phis(s, self.uses, self.live)
        if phis != other:
            raise CannotFuse(f"the arms of the branch at {s.line} define different values")
        calls = any(isinstance(x, CallRegion) for x in walk(s.then + s.orelse))
        if not phis and not calls:  # nothing either arm computes is used
            return
        cond = self.lookup(s.cond)
        if all(isinstance(x, Assign) for x in s.then + s.orelse) and self.select(s, phis, cond):
            return
        arms = [self.subgraph(arm, phis + [self.arm_path]) for arm in (s.then, s.orelse)]
        if _speculate(arms) and not s.switch_case:  # gather_switches may drop its `If`s
            for (nodes, inits, _), taken in zip(arms, (True, False)):
                self.guard(nodes, cond, taken)
                self.nodes += nodes
                self.initializers += inits
            for d, a, b in zip(phis, arms[0][2], arms[1][2]):
                self.env[d] = self.node("Where", [cond, a.name, b.name], d.name, like=a.name)
            paths = [self.subgraph([], [lambda o=o: o[-1].name]) for _, _, o in arms]
            self.trace.append(self.if_node_of(cond, paths, [self.fresh("path")])[0])
            return
        outs = [self.fresh(d.name) for d in phis] + [self.fresh("path")]
        self.if_node_of(cond, arms, outs, SWITCH if s.switch_case else "if")
        for d, out, vi in zip(phis, outs, arms[0][2]):
            self.types[out] = vi.type
            self.env[d] = out
        self.trace.append(outs[-1])

    def if_node_of(self, cond: str, arms: list, outs: list, kind: str = "if") -> list:
        """An `If` node choosing between built `arms` (its name starts with `kind`);
        returns its outputs."""
        branches = [helper.make_graph(nodes, self.fresh(f"{self.name}_{tag}"), [], o, inits)
                    for (nodes, inits, o), tag in zip(arms, ("then", "else"))]
        tag = self.unmarked.get(cond, cond)  # the same name with or without a marker
        self.nodes.append(helper.make_node("If", [cond], outs, name=self.fresh(f"{kind}_{tag}"),
                                           then_branch=branches[0], else_branch=branches[1]))
        self.types[outs[-1]] = _IDS
        return outs

    def false(self, x) -> bool:
        """Whether `x` (an ONNX name or a Lit) is the constant False."""
        return x == Lit(False) if isinstance(x, Lit) else self.truth.get(x) is False

    def select(self, s: If, phis: list, cond: str) -> bool:
        """A branch that only assigns, without an `If` node: a value both arms assign
        stays as it is, a flag becomes the condition (or its negation), another value of
        one type a `Where`. False (nothing added) when some phi needs an `If`."""
        arms, unset = [], []
        for arm in (s.then, s.orelse):
            srcs = dict(self.env)  # var -> ONNX name, or a Lit
            for a in arm:
                srcs.update(zip(a.dsts, [srcs.get(x) if isinstance(x, Var) else x
                                         for x in a.srcs]))
            arms.append([srcs.get(d) for d in phis])
            unset.append({d for d, f in self.scan_flags.items() if self.false(srcs.get(f))})

        def typ(d, v):
            if isinstance(v, Lit):
                return _scalar(self.kinds[d]) if d in self.kinds else None
            return self.types.get(v)

        for d, a, b in zip(phis, *arms):
            t = typ(d, a)
            if a is None or b is None or not (a == b or (t is not None and t == typ(d, b))):
                return False
        cond = self.scalar(cond, "cond")  # a `Where` broadcasts its condition
        for d, a, b in zip(phis, *arms):
            x, y = (self.assigned(d, v) if isinstance(v, Lit) else v for v in (a, b))
            if a == b:
                self.env[d] = x
            elif d in unset[0] or d in unset[1]:  # not appended in one arm: never read
                self.env[d] = y if d in unset[0] else x
            elif self.elem(x) == BOOL:  # no bool `Where` on ONNX Runtime's CPU
                self.env[d] = self.logic("Or", self.logic("And", cond, x),
                                         self.logic("And", self.logic("Not", cond), y))
            else:
                self.env[d] = self.node("Where", [cond, x, y], d.name, like=x)
        return True

    def loop_node(self, plan) -> None:
        """An ONNX `Loop` running `plan` (an `onnx_loops.LoopPlan`)."""
        loop = plan.loop
        defs = dict.fromkeys(d for s in walk(plan.body) for d in s.defs())
        synthetic = {plan.stop} | {v for a in plan.appends for v in (a.value, a.taken)}
        carried = [d for d in defs if d in self.env and d not in synthetic]
        inner = Counter(v for s in walk(loop.body) for v in s.uses())
        leak = [d for d in defs if d not in self.env and d not in synthetic
                and self.uses[d] > inner[d]]
        if leak or (loop.target is not None and self.uses[loop.target] > inner[loop.target]):
            raise CannotFuse(f"the loop at {loop.line} defines {leak} for later code")
        if plan.appends and self.depth:
            raise CannotFuse(f"the loop at {loop.line} appends to a list inside a branch")
        if plan.count and isinstance(start := self.consts.get(self.env.get(plan.count[0])),
                                     int):  # a counted `while`: a trip count, no test
            plan = dataclasses.replace(plan, trips=max(0, plan.count[1] - start), header=[])
        if self.peelable(plan):
            cond0 = self.peel(plan, set(carried) | synthetic)
            plan = dataclasses.replace(plan, trips=plan.trips - 1, start=plan.start + plan.step)
        else:
            self.stmts(plan.header)
            cond0 = self.loop_test(plan) if plan.header else self.const(True, BOOL)
        if cond0 not in self.consts:  # ONNX Runtime takes the body's condition rank from
            # it; computed from a value of unknown rank (a `Loop`'s carried output) it would
            # refuse to run ("Loop subgraph input 1 has unknown shape")
            cond0 = self.node("Reshape", [cond0, self.const([], INT64)], "go0", kind=BOOL)
        trips = self.const(plan.trips, INT64) if plan.trips is not None else ""
        it, cin = self.fresh(f"{self.name}_iter"), self.fresh(f"{self.name}_cond")
        # the condition: 0-d, or [1, 1] where it is a comparison's result as it is
        inputs = [(it, None, _scalar(INT64)), (cin, None, _elem_type(_scalar(BOOL)))]
        inputs += [(self.fresh(d.name), d, _elem_type(self.types[self.env[d]]))
                   for d in carried]
        path = self.fresh(f"{self.name}_path")  # carried: the regions run so far
        inputs.append((path, None, _IDS))
        body = list(plan.body)
        if loop.target is not None:
            body.insert(0, HostOp(loop.target, _Target(it, plan.start, plan.step)))
        results = [lambda: self.loop_cond(plan)] + carried + [
            lambda: self.joined([path] + self.trace)] + [
            v for a in plan.appends for v in (a.value, a.taken)]
        outer_live, outer_flags = self.live, self.scan_flags
        self.live = self.live | set(carried) | synthetic
        self.scan_flags = {**outer_flags, **{a.value: a.taken for a in plan.appends}}
        try:
            nodes, inits, outs = self.subgraph(body, results, inputs)
        finally:
            self.live, self.scan_flags = outer_live, outer_flags
        negated = _negated_flags(nodes, outs, len(outs) - 2 * len(plan.appends))
        nodes, inits = self.hoist(nodes, inits, [n for n, _, _ in inputs], outs)
        nodes, inits = tabulate(nodes, inits, [o.name for o in outs], self.constants(), it,
                                plan.trips, self.opsets())
        g = helper.make_graph(nodes, self.fresh(f"{self.name}_body"),
                              [helper.make_value_info(n, t) for n, _, t in inputs], outs, inits)
        names = [self.fresh(d.name) for d in carried] + [self.fresh("path")]
        scans = [self.fresh(f"{v.name}_scan") for a in plan.appends for v in (a.value, a.taken)]
        self.nodes.append(helper.make_node("Loop", [trips, cond0] + [
            self.env[d] for d in carried] + [self.joined([])], names + scans,
            name=self.fresh("loop"), body=g))
        for n, vi in zip(names + scans, outs[1:]):
            self.types[n] = _elem_type(vi.type)
        self.env.update(zip(carried, names))
        self.trace.append(names[-1])
        for i, a in enumerate(plan.appends):
            self.appends.append((a, scans[2 * i], scans[2 * i + 1], negated[i]))

    def peelable(self, plan) -> bool:
        """A loop that runs at least once (a trip count, no test before the first
        iteration) and appends nothing, whose body holds at most `PEEL_MAX_WEIGHTS`."""
        if not plan.trips or plan.header or plan.appends:
            return False
        regions = {s.region for s in walk(plan.body) if isinstance(s, CallRegion)}
        return sum(int(np.prod(t.dims)) for r in regions
                   for t in self.graph.regions[r].onnx.graph.initializer) <= PEEL_MAX_WEIGHTS

    def peel(self, plan, live: set) -> str:
        """The loop's first iteration, in line before the `Loop`; returns the condition the
        `Loop` starts with (no break taken). `live`: what the iteration must keep."""
        body = list(plan.body)
        if plan.loop.target is not None:
            body.insert(0, Assign([plan.loop.target], [Lit(plan.start)]))
        outer_live, self.live = self.live, self.live | live
        try:
            self.stmts(body)
        finally:
            self.live = outer_live
        if plan.stop is None:
            return self.const(True, BOOL)
        return self.scalar(self.logic("Not", self.operand(plan.stop, BOOL)), "go")

    def hoist(self, nodes: list, inits: list, inputs: list, outs: list) -> tuple[list, list]:
        """A loop body's invariant nodes (nothing they read changes between iterations)
        move before the `Loop`, with the initializers they read: ONNX Runtime would run
        them on every iteration (ACT's GRU input projection: 0.059 -> 0.054 ms)."""
        variant, results = set(inputs), {o.name for o in outs}
        for n in nodes:
            if variant.intersection(n.input) or results.intersection(n.output) or any(
                    a.type == onnx.AttributeProto.GRAPH for a in n.attribute) or \
                    n.op_type in RANDOM_OPS:  # a fresh draw every iteration
                variant.update(n.output)
        moved = [n for n in nodes if not variant.intersection(n.output)]
        if all(n.op_type == "Constant" for n in moved):
            return nodes, inits
        read = {i for n in moved for i in n.input}
        self.nodes += moved
        self.initializers += [t for t in inits if t.name in read]
        return ([n for n in nodes if variant.intersection(n.output)],
                [t for t in inits if t.name not in read])

    def constants(self) -> dict:
        """The constants of the scope being built: name -> TensorProto."""
        out = {t.name: t for t in self.initializers}
        out.update((n.output[0], t) for n in self.nodes
                   if (t := constant_tensor(n)) is not None)
        return out

    def opsets(self) -> list:
        """The opsets of the regions being fused (every region was exported with them)."""
        return list(next(r.onnx for r in self.graph.regions.values()
                         if r.onnx is not None).opset_import)

    def loop_test(self, plan) -> str:
        """The rotated `while` test: True while the loop goes on (a bool scalar)."""
        go = self.operand(plan.exit_var, BOOL)
        if plan.exit_when:
            go = self.logic("Not", go)
        return self.scalar(go, "go")

    def loop_cond(self, plan) -> str:
        """cond_out of the body: no break taken, and the rotated test holds."""
        parts = []
        if plan.stop is not None:
            parts.append(self.logic("Not", self.operand(plan.stop, BOOL)))
        if plan.header:
            self.stmts(plan.header)
            parts.append(self.loop_test(plan))
        return self.scalar(self.logic("And", *parts), "go")


@dataclass(frozen=True)
class _Target:
    """A `for` loop's target, `start + step * iteration` (an expression only the Builder
    makes and reads)."""

    it: str
    start: int
    step: int


def dedupe(g: onnx.GraphProto, known: dict | None = None, renamed: dict | None = None) -> int:
    """Common subexpressions of `g` and its subgraphs computed once: a node with the op,
    attributes and inputs of an earlier one (a `Constant` with its value) reads that
    one's results instead; a subgraph's node may reuse the enclosing graph's. The
    exporter repeats work per region (moe reshapes its expert index once per case).
    A subgraph's outputs are positional: one a repeated node made is renamed to the
    earlier node's result when that is made in the same subgraph and not an output
    yet (the decoder's token, compared and appended). Returns how many nodes were
    removed."""
    inner = known is not None
    known = dict(known or {})
    renamed = dict(renamed or {})
    outputs = {o.name for o in g.output}
    kept, made, removed = [], set(), _same_initializers(g, renamed)
    for n in g.node:
        for i, name in enumerate(n.input):
            n.input[i] = renamed.get(name, name)
        subs = [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
        for sub in subs:
            removed += dedupe(sub, known, renamed)
        exposed = outputs.intersection(n.output)
        key = None if subs or n.op_type in RANDOM_OPS or n.name.startswith(MARK) else (
            n.domain, n.op_type, tuple(n.input), len(n.output), _attributes(n))
        if key in known and (not exposed or inner and made.issuperset(known[key])
                             and not outputs.intersection(known[key])):
            renamed.update(zip(n.output, known[key]))
            if exposed:
                for o in g.output:
                    o.name = renamed.get(o.name, o.name)
                outputs = {o.name for o in g.output}
            removed += 1
            continue
        if key is not None and not exposed:
            known[key] = list(n.output)
        kept.append(n)
        made.update(n.output)
    del g.node[:]
    g.node.extend(kept)
    return removed


def _same_initializers(g: onnx.GraphProto, renamed: dict) -> int:
    """Initializers of `g` equal to an earlier one of `g` (same type, shape and values)
    are read under that one's name, so that nodes reading them become alike too (two
    regions' `GRU` steps unsqueeze act's input by the same axes, each with its own
    constant). Not across graphs: ONNX Runtime optimizes a subgraph with its own
    initializers, not with the enclosing graph's (gated54 0.8 % slower merged across).
    Returns how many were dropped."""
    kept, first, named = [], {}, {v.name for v in [*g.input, *g.output]}
    for t in g.initializer:
        data = numpy_helper.to_array(t).tobytes()
        key = (t.data_type, tuple(t.dims), hashlib.blake2b(data, digest_size=16).digest())
        if key in first and t.name not in named and \
                numpy_helper.to_array(first[key]).tobytes() == data:
            renamed[t.name] = first[key].name
            continue
        first.setdefault(key, t)
        kept.append(t)
    dropped = len(g.initializer) - len(kept)
    if dropped:
        del g.initializer[:]
        g.initializer.extend(kept)
    return dropped


def _attributes(n: onnx.NodeProto) -> tuple:
    """A node's attributes, those set to their default left out (the exporter writes
    `allowzero=0` on a `Reshape`, the builder does not)."""
    defaults = _defaults(n.op_type, n.domain)
    return tuple(sorted(a for a in (a.SerializeToString() for a in n.attribute)
                        if a not in defaults))


@functools.cache
def _defaults(op: str, domain: str) -> frozenset:
    """The op's attributes at their default value, serialized (name included)."""
    try:
        schema = onnx.defs.get_schema(op, domain=domain)
    except onnx.defs.SchemaError:
        return frozenset()
    return frozenset(a.default_value.SerializeToString() for a in schema.attributes.values()
                     if a.default_value.type)


def _check(m: onnx.ModelProto) -> None:
    """`onnx.checker` on a copy: it insists on a shape where the rank is free."""
    c = onnx.ModelProto()
    c.CopyFrom(m)

    def fill(g):
        for v in [*g.input, *g.output]:
            if not v.type.tensor_type.HasField("shape"):
                v.type.tensor_type.shape.SetInParent()
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    fill(a.g)
    fill(c.graph)
    try:
        onnx.checker.check_model(c)
    except onnx.checker.ValidationError as e:
        raise CannotFuse(str(e)) from e
