"""Differential property tests of three more ONNX graph rewrites (issue #22), in the style
of tests/test_rewrite_properties.py: random graphs of the shapes each rewrite matches,
run by ONNX Runtime before and after the rewrite on random inputs with NaN, infinities
and signed zeros mixed in, 200 graphs per rewrite:

- `gather_switches` (dycomp.backends.onnx_switch): switch chains of 2-5 alike options,
  indices in and out of range, negative ones included: exact (`assert_array_equal`,
  NaN == NaN);
- `drop_path` (dycomp.runtime.onnx_paths): nested `If` / `Loop` carrying a path output
  beside the real outputs: exact, and exactly the path's nodes dropped;
- `across_branches` (dycomp.runtime.onnx_layout): small conv graphs with `If`s, optimized
  by ONNX Runtime for this CPU, run with and without the rewrite: bitwise, or within
  1e-5 with NaN and infinities in place where the rewrite lets ONNX Runtime's blocked
  kernels sum in another order (a blocked pool, a fused residual sum)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from dycomp.backends.onnx_switch import SWITCH, gather_switches
from tests.test_rewrite_properties import SPECIALS, _copy, _model, _values

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
F, I64 = TensorProto.FLOAT, TensorProto.INT64
SEEDS = st.integers(0, 2**32 - 1)


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    """One thread, graph optimizations off: the graph runs as it is."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    o.log_severity_level = 3
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])


def _run(m: onnx.ModelProto, feed: dict) -> list:
    s = _session(m)
    return s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})




def _same(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


# --- gather_switches: exact ------------------------------------------------------------

W = 3  # the width of x and of every option's values
RESHAPES = [[2, W], [-1, W], [2, -1], [0, W], [0, -1]]  # [2, 3] to [2, 3], written so
UNARY = ["Relu", "Tanh", "Neg", "Abs"]


@st.composite
def switch_chains(draw):
    """`options[i](x)` as the builder lowers it (`_switch_model`): 2-5 options with the
    same nodes and different weights (initializers or `Constant`s, some equal in every
    option, NaN and infinities among them), sometimes one option unlike the others.
    Returns (model, options, the unlike option or None, index shape, rng)."""
    rng = np.random.default_rng(draw(SEEDS))
    n = draw(st.integers(2, 5))
    # the option's structure: (op, unary op, weight shape, weight differs, as Constant)
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["MatMul", "Add", "Mul", "Max", "unary", "outer",
                                   "Reshape"]))
        shape = {"MatMul": (W, W), "Add": draw(st.sampled_from([(W,), (1, W), ()])),
                 "Reshape": (2,)}.get(op, (W,))
        steps.append((op, draw(st.sampled_from(UNARY)), shape, draw(st.booleans()),
                      draw(st.booleans())))

    def weight(step):  # a Reshape's shape: [2, 3] written in one of its ways (int64)
        if step[0] == "Reshape":
            return np.array(RESHAPES[rng.integers(len(RESHAPES))], np.int64)
        return _values(rng, step[2], 0.1)

    weights = [[weight(s) for s in steps]]
    for _ in range(n - 1):
        weights.append([weight(s) if s[3] else w for s, w in zip(steps, weights[0])])
    odd = draw(st.sampled_from([None] * 4 + list(range(n))))
    shape = draw(st.sampled_from([(), (1,)]))  # the index: 0-d, or one element
    wrap = draw(st.booleans())
    m = _switch_model(steps, weights, two=draw(st.booleans()), odd=odd, shape=shape,
                      const_k=draw(st.booleans()), flip=draw(st.sampled_from([1, -1])),
                      wrap=wrap)
    return m, n, odd, shape, wrap, rng


def _switch_model(steps, weights, two=False, odd=None, shape=(), const_k=False, flip=1,
                  wrap=False):
    """`If(Equal(i, 0))` with option 0 as its then-arm and the rest of the chain
    (`Equal(i, 1)`, `If`, `Identity`s) as its else-arm, down to the last option. Option k
    applies `steps` with `weights[k]` to x and returns the value (and, with `two`, the
    first step's value) and its path id [10 + k]; option `odd` adds a `Sigmoid` (unlike
    the others). `const_k`: the first case's k a `Constant`, else an initializer; `flip`:
    `Equal(i, k)` or `Equal(k, i)`. `wrap`: the chain in the then-arm of an `If(c)`
    (reading i and x from the outer graph) whose else-arm returns x (and x) and [99]."""
    n = len(weights)

    def option(k: int) -> onnx.GraphProto:
        nodes, inits, cur = [], [], "x"
        for j, ((op, unary, _, _, as_const), w) in enumerate(zip(steps, weights[k])):
            out, wn = f"o{k}_{j}", f"o{k}_w{j}"
            if op == "unary":
                nodes.append(oh.make_node(unary, [cur], [out]))
            elif op == "outer":  # reads x, the same in every option
                nodes.append(oh.make_node("Add", [cur, "x"], [out]))
            else:
                if as_const:
                    nodes.append(_const(wn, w))
                else:
                    inits.append(numpy_helper.from_array(w, wn))
                nodes.append(oh.make_node(op, [cur, wn], [out]))
            cur = out
        if k == odd:
            nodes.append(oh.make_node("Sigmoid", [cur], [f"o{k}_odd"]))
            cur = f"o{k}_odd"
        nodes.append(_const(f"o{k}_path", np.array([10 + k], np.int64)))
        outs = [cur] + ([f"o{k}_0"] if two else []) + [f"o{k}_path"]
        ids = [oh.make_node("Identity", [o], [f"o{k}_out{m}"]) for m, o in enumerate(outs)]
        return oh.make_graph(nodes + ids, f"option{k}", [], [
            oh.make_tensor_value_info(f"o{k}_out{m}", I64 if o.endswith("path") else F, None)
            for m, o in enumerate(outs)], inits)

    def arm_else(k: int) -> onnx.GraphProto:  # from the inside out: the last is an option
        if k == n - 1:
            return option(k)
        inner = [f"r{k}_{m}" for m in range(2 + two)]
        nodes = [_const(f"k{k}", np.array(k, np.int64)),
                 oh.make_node("Equal", ["i", f"k{k}"][::flip], [f"eq{k}"]),
                 oh.make_node("If", [f"eq{k}"], inner, name=f"{SWITCH}{k}",
                              then_branch=option(k), else_branch=arm_else(k + 1))]
        nodes += [oh.make_node("Identity", [r], [r + "_e"]) for r in inner]
        return oh.make_graph(nodes, f"else{k}", [], [
            oh.make_tensor_value_info(r + "_e", I64 if m == 1 + two else F, None)
            for m, r in enumerate(inner)])

    outs = ["y"] + (["y0"] if two else []) + ["path"]
    nodes = [oh.make_node("Equal", ["i", "k0"][::flip], ["eq0"]),
             oh.make_node("If", ["eq0"], outs, name=f"{SWITCH}0", then_branch=option(0),
                          else_branch=arm_else(1))]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "k0")]
    if const_k:
        nodes.insert(0, _const("k0", np.array(0, np.int64)))
        inits = []
    values = [oh.make_tensor_value_info(o, I64 if o == "path" else F, None) for o in outs]
    inputs = [oh.make_tensor_value_info("x", F, [2, W]),
              oh.make_tensor_value_info("i", I64, shape)]
    if wrap:
        then = oh.make_graph(nodes, "chain", [], values, inits)
        other = [oh.make_node("Identity", ["x"], [f"w_{o}"]) for o in outs[:-1]]
        other.append(_const("w_path", np.array([99], np.int64)))
        other = oh.make_graph(other, "other", [], [
            oh.make_tensor_value_info(f"w_{o}", I64 if o == "path" else F, None)
            for o in outs])
        nodes, inits = [oh.make_node("If", ["c"], [f"{o}_" for o in outs],
                                     then_branch=then, else_branch=other)], []
        values = [oh.make_tensor_value_info(f"{o}_", I64 if o == "path" else F, None)
                  for o in outs]
        inputs.append(oh.make_tensor_value_info("c", TensorProto.BOOL, []))
    return _model(nodes, inputs, values, inits)


def _chain_index(i: int, n: int) -> int:
    """The option the chain runs for index `i`: `i` when a case names it, else the last."""
    return i if 0 <= i < n - 1 else n - 1


@SETTINGS
@given(switch_chains())
def test_switch_gather_matches_the_chain(case):
    """The chain of `If`s and the one gathered graph: the same outputs (exact) for every
    index from -n-2 to n+2 (out of range and negative: the chain's last option), the
    option's path id included; the chain is gathered whenever it is cheaper."""
    m, n, odd, shape, wrap, rng = case
    r = _copy(m)
    assert gather_switches(r.graph) == (odd is None)
    g = oh.get_node_attr_value(r.graph.node[0], "then_branch") if wrap else r.graph
    assert any(x.op_type == "If" for x in g.node) == (odd is not None)
    chain, gathered = _session(m), _session(r)
    for i in range(-n - 2, n + 3):
        feed = {"x": _values(rng, (2, W)), "i": np.full(shape, i, np.int64),
                "c": np.array(i % 4 != 0)}
        want = chain.run(None, {k: feed[k] for k in (v.name for v in m.graph.input)})
        taken = [10 + _chain_index(i, n)] if feed["c"] or not wrap else [99]
        assert want[-1].tolist() == taken
        _same(gathered.run(None, {k: feed[k] for k in (v.name for v in m.graph.input)}),
              want)



def test_switch_gather_runs_the_chains_option_out_of_range():
    """The counterexamples: 3 options `x * w[k]`. The chain runs the last option for
    i = -2 and i = 3; gathered by `i` itself, -2 took option 1 (a wrong value, no error)
    and 3 failed in `Gather`. A one-element index of shape [1] gave every gathered
    weight a leading 1 (y of shape [1, 2, 3])."""
    weights = [[np.full(W, k + 1.0, np.float32)] for k in range(3)]
    x = np.ones((2, W), np.float32)
    for shape in ((), (1,)):
        m = _switch_model([("Mul", None, (W,), True, False)], weights, shape=shape)
        r = _copy(m)
        assert gather_switches(r.graph) == 1
        for i in (-2, 3, 1):
            feed = {"x": x, "i": np.full(shape, i, np.int64)}
            y, path = _session(r).run(None, feed)
            assert y.shape == (2, W) and path.tolist() == [10 + _chain_index(i, 3)]
            np.testing.assert_array_equal(y, x * (_chain_index(i, 3) + 1))
            _same([y, path], _run(m, feed))



# --- drop_path: exact ------------------------------------------------------------------
# Every node and value that only the path output needs is named "p_..."; drop_path must
# remove exactly those: nothing else (the real outputs' nodes), all of them.

REAL_UNARY, REAL_BINARY = ["Tanh", "Relu", "Neg", "Sqrt"], ["Add", "Mul", "Sub", "Max"]


class _Traced:
    """Builds a traced program: real values [2, 3] (float), path pieces (int64 lists)."""

    def __init__(self, draw):
        self.draw, self.count, self.inputs, self.ids = draw, 0, [], 0

    def fresh(self, tag: str) -> str:
        self.count += 1
        return f"{tag}{self.count}"

    def block(self, v: str, depth: int, ctx: str) -> tuple[list, str, list]:
        """Nodes computing a new real value from `v` (regions, `If`s, `Loop`s in a random
        order); returns (nodes, the value, its path pieces)."""
        nodes, pieces = [], []
        for _ in range(self.draw(st.integers(1, 3 if depth < 2 else 1))):
            kind = self.draw(st.sampled_from(["region"] * 2 + (["if", "loop"] if depth < 2
                                                                 else [])))
            made, v, piece = {"region": self.region, "if": self.if_,
                              "loop": self.loop}[kind](v, depth, ctx)
            nodes += made
            pieces += piece
        return nodes, v, pieces

    def region(self, v, depth, ctx):
        out = self.fresh("r")
        if self.draw(st.booleans()):
            node = oh.make_node(self.draw(st.sampled_from(REAL_UNARY)), [v], [out], name=out)
        else:
            other = self.draw(st.sampled_from([v, "x", "x2"] + ([ctx] if ctx else [])))
            node = oh.make_node(self.draw(st.sampled_from(REAL_BINARY)), [v, other], [out],
                                name=out)
        pid = self.fresh("p_id")
        self.ids += 1
        return [node, _const(pid, np.array([self.ids], np.int64))], out, [pid]

    def joined(self, pieces: list) -> tuple[list, str]:
        """The pieces as one id list (a `Concat`, or an empty list)."""
        if not pieces:
            p = self.fresh("p_empty")
            return [_const(p, np.zeros(0, np.int64))], p
        if len(pieces) == 1:
            return [], pieces[0]
        p = self.fresh("p_cat")
        return [oh.make_node("Concat", pieces, [p], name=p, axis=0)], p

    def condition(self, v):
        """A bool input, or `ReduceSum(v) > 0` (NaN: False)."""
        if self.draw(st.booleans()):
            c = self.fresh("c")
            self.inputs.append(oh.make_tensor_value_info(c, TensorProto.BOOL, []))
            return [], c
        s, c = self.fresh("sum"), self.fresh("gt")
        return [oh.make_node("ReduceSum", [v], [s], name=s, keepdims=0),
                oh.make_node("Greater", [s, "zero"], [c], name=c)], c

    def arm(self, v, depth, ctx, name):
        nodes, out, pieces = self.block(v, depth + 1, ctx)
        more, path = self.joined(pieces)
        ro, po = self.fresh("ro"), self.fresh("p_o")
        nodes += more + [oh.make_node("Identity", [out], [ro], name=ro),
                         oh.make_node("Identity", [path], [po], name=po)]
        return oh.make_graph(nodes, self.fresh(name), [], [
            oh.make_tensor_value_info(ro, F, None), oh.make_tensor_value_info(po, I64, [None])])

    def if_(self, v, depth, ctx):
        nodes, c = self.condition(v)
        out, path = self.fresh("y"), self.fresh("p_if")
        then, other = self.arm(v, depth, ctx, "then"), self.arm(v, depth, ctx, "else")
        name = self.fresh("if")
        nodes.append(oh.make_node("If", [c], [out, path], name=name, then_branch=then,
                                  else_branch=other))
        return nodes, out, [path]

    def loop(self, v, depth, ctx):
        """`Loop(trips, True, v, [counter,] path)`: the body reads v (and the iteration
        counter, as a float: real), a dead counter (`p_`) feeds only itself (and maybe
        the path: a carried value before the path that only the path reads), the body's
        condition `ReduceSum(v) < 100` or true, sometimes a scan output of v (summed
        after the loop, as the builder's appends come after the path)."""
        trips = self.fresh("n")
        self.inputs.append(oh.make_tensor_value_info(trips, I64, []))
        it, cin, vin, pin = (self.fresh(t) for t in ("it", "cin", "v", "p_in"))
        dead = self.draw(st.sampled_from([None, "dead", "traced"]))
        cnt, cnt2 = self.fresh("p_cnt"), self.fresh("p_cnt")
        k = self.fresh("k")
        body, out, pieces = self.block(vin, depth + 1, k)
        if dead == "traced":  # the counter is in the path too: [.., cnt, ..]
            one = self.fresh("p_cnt1")
            body.append(oh.make_node("Reshape", [cnt, "p_shape1"], [one], name=one))
            pieces.append(one)
        more, path = self.joined([pin] + pieces)
        nodes = [oh.make_node("Cast", [it], [k], name=k, to=F)] if k in _reads(body) else []
        nodes += body + more
        vo, po, co = self.fresh("vo"), self.fresh("p_out"), self.fresh("co")
        nodes += [oh.make_node("Identity", [out], [vo], name=vo),
                  oh.make_node("Identity", [path], [po], name=po)]
        if self.draw(st.booleans()):
            s = self.fresh("sum")
            nodes += [oh.make_node("ReduceSum", [out], [s], name=s, keepdims=0),
                      oh.make_node("Less", [s, "hundred"], [co], name=co)]
        else:
            nodes.append(oh.make_node("Identity", [cin], [co], name=co))
        ins = [oh.make_tensor_value_info(it, I64, []),
               oh.make_tensor_value_info(cin, TensorProto.BOOL, []),
               oh.make_tensor_value_info(vin, F, [2, W])]
        outs = [oh.make_tensor_value_info(co, TensorProto.BOOL, []),
                oh.make_tensor_value_info(vo, F, [2, W])]
        carried_in, carried_out = [v], [self.fresh("y")]
        if dead:  # a counter only its own next value (and the path) reads
            nodes.append(oh.make_node("Add", [cnt, "one"], [cnt2], name=cnt2))
            ins.append(oh.make_tensor_value_info(cnt, I64, []))
            outs.append(oh.make_tensor_value_info(cnt2, I64, []))
            carried_in.append("zero_i")
            carried_out.append(self.fresh("p_cnt_final"))
        ins.append(oh.make_tensor_value_info(pin, I64, [None]))
        outs.append(oh.make_tensor_value_info(po, I64, [None]))
        scans, result, after = [], carried_out[0], []
        if self.draw(st.booleans()):  # a scan output of v (an append), summed after
            so, scan, total = self.fresh("so"), self.fresh("scan"), self.fresh("total")
            nodes.append(oh.make_node("Identity", [vo], [so], name=so))
            outs.append(oh.make_tensor_value_info(so, F, [2, W]))
            scans, result = [scan], self.fresh("y")
            after = [oh.make_node("ReduceSum", [scan, "axis0"], [total], name=total,
                                  keepdims=0),
                     oh.make_node("Add", [carried_out[0], total], [result], name=result)]
        start, p0 = self.joined([])
        name = self.fresh("loop")
        loop_out_path = self.fresh("p_loop")
        nodes_out = start + [oh.make_node(
            "Loop", [trips, "true"] + carried_in + [p0],
            carried_out + [loop_out_path] + scans,
            name=name, body=oh.make_graph(nodes, self.fresh("body"), ins, outs))] + after
        return nodes_out, result, [loop_out_path]


@st.composite
def traced_programs(draw):
    """A traced model: x, x2 [2, 3] -> a random nest of regions, `If`s and `Loop`s up to
    3 deep, its real output(s) and the path output."""
    from dycomp.runtime.onnx_paths import PATH_OUTPUT

    t = _Traced(draw)
    nodes, out, pieces = t.block("x", 0, "")
    more, path = t.joined(pieces)
    nodes += more + [oh.make_node("Identity", [path], [PATH_OUTPUT], name="p_path")]
    outs = [out] + (["x2"] if draw(st.booleans()) else [])  # an input as an output too
    inits = [numpy_helper.from_array(np.array(v, d), name) for name, v, d in (
        ("zero", 0.0, np.float32), ("hundred", 100.0, np.float32), ("one", 1, np.int64),
        ("zero_i", 0, np.int64), ("true", True, np.bool_), ("axis0", [0], np.int64),
        ("p_shape1", [1], np.int64))]
    position = draw(st.integers(0, len(outs)))  # where the path output is among them
    values = [oh.make_tensor_value_info(o, F, [2, W]) for o in outs]
    values.insert(position, oh.make_tensor_value_info(PATH_OUTPUT, I64, [None]))
    m = _model(nodes, [oh.make_tensor_value_info(x, F, [2, W]) for x in ("x", "x2")]
               + t.inputs, values, inits)
    return m, position, np.random.default_rng(draw(SEEDS))


def _reads(nodes) -> set:
    """Every name `nodes` and their subgraphs read."""
    names = set()
    for n in nodes:
        names |= set(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= _reads(a.g.node) | {o.name for o in a.g.output}
    return names


def _names(g: onnx.GraphProto) -> set:
    """Every node name and value name of `g` and its subgraphs, but initializers (an
    unread one goes too)."""
    names = {v.name for v in list(g.input) + list(g.output)}
    for n in g.node:
        names |= {n.name, *n.output}
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= _names(a.g)
    return names - {""}


@SETTINGS
@given(traced_programs())
def test_drop_path_keeps_the_real_outputs(case):
    """The traced model without its path output: the real outputs identical (exact) on
    random inputs, NaN and infinities included, every loop trip count 0-3 and both
    values of every condition input; exactly the path's nodes, `If` outputs and `Loop`
    carried values gone (their names start with "p_"), nothing else."""
    from dycomp.runtime.onnx_paths import PATH_OUTPUT, drop_path

    m, position, rng = case
    r = drop_path(m)
    onnx.checker.check_model(r)
    before, after = _names(m.graph), _names(r.graph)
    assert after == {x for x in before if not x.startswith("p_")} - {PATH_OUTPUT}
    traced, plain = _session(m), _session(r)
    for _ in range(4):
        feed = {}
        for v in m.graph.input:
            elem = v.type.tensor_type.elem_type
            feed[v.name] = (_values(rng, (2, W)) if elem == F else
                            np.array(rng.integers(0, 4), np.int64) if elem == I64 else
                            np.array(rng.random() < 0.5))
        want = traced.run(None, feed)
        del want[position]
        _same(plain.run(None, {k: feed[k] for k in (i.name for i in plain.get_inputs())}),
              want)


# --- across_branches: on ONNX Runtime's optimized graph ----------------------------------

class _Convs:
    """Builds small conv graphs with `If`s: every value [1, C, H, W] (C fixed per graph)."""

    def __init__(self, draw, rng, channels: int):
        self.draw, self.rng, self.c, self.count, self.inits = draw, rng, channels, 0, []
        self.extra: list = []  # more graph outputs: an `If`'s second outputs

    def fresh(self, tag: str) -> str:
        self.count += 1
        return f"{tag}{self.count}"

    def conv(self, x: str, cin: int, relu: bool) -> tuple[list, str]:
        k = self.draw(st.sampled_from([1, 3]))
        w, b, out = self.fresh("w"), self.fresh("b"), self.fresh("conv")
        self.inits += [numpy_helper.from_array(
            (self.rng.standard_normal((self.c, cin, k, k)) / np.sqrt(cin * k * k)).astype(
                np.float32), w),
            numpy_helper.from_array(self.rng.standard_normal(self.c).astype(np.float32), b)]
        bias = [b] if self.draw(st.booleans()) else []
        nodes = [oh.make_node("Conv", [x, w] + bias, [out], name=out, pads=[k // 2] * 4)]
        if relu:
            r = self.fresh("relu")
            nodes.append(oh.make_node("Relu", [out], [r], name=r))
            out = r
        return nodes, out

    def block(self, x: str, depth: int) -> tuple[list, str]:
        kind = self.draw(st.sampled_from(["conv", "residual", "identity", "pool_add"]
                                         + (["if", "loop"] if depth < 2 else [])))
        if kind == "loop":
            return self.loop(x, depth)
        if kind == "conv":
            return self.conv(x, self.c, self.draw(st.booleans()))
        if kind == "identity":
            out = self.fresh("id")
            return [oh.make_node("Identity", [x], [out], name=out)], out
        if kind == "pool_add":  # x + its channel means: a broadcast, not a residual
            p, out = self.fresh("gap"), self.fresh("padd")
            return [oh.make_node("GlobalAveragePool", [x], [p], name=p),
                    oh.make_node("Add", [x, p], [out], name=out)], out
        if kind == "residual":  # relu(conv(relu(conv(x))) + x), operands either way
            a, h = self.conv(x, self.c, True)
            b, h = self.conv(h, self.c, False)
            out = self.fresh("res")
            nodes = a + b + [oh.make_node("Add", [h, x] if self.draw(st.booleans()) else
                                          [x, h], [out], name=out)]
            if self.draw(st.booleans()):
                r = self.fresh("relu")
                nodes.append(oh.make_node("Relu", [out], [r], name=r))
                out = r
            return nodes, out
        return self.if_(x, depth)

    def arm(self, x: str, depth: int, second: str | None) -> onnx.GraphProto:
        """An arm: 1-2 blocks on x, their weights its own initializers (as the builder
        makes them: ONNX Runtime blocks only convolutions whose weights are local). With
        `second`, a second output: x itself ("outer") or the first block's value."""
        nodes, out, outer, self.inits = [], x, self.inits, []
        values = []
        for _ in range(self.draw(st.integers(1, 2))):
            more, out = self.block(out, depth + 1)
            nodes += more
            values.append(out)
        outs = [out] + ([] if second is None else [x if second == "outer" else values[0]])
        names = [self.fresh("arm_out") for _ in outs]
        nodes += [oh.make_node("Identity", [v], [o], name=o) for v, o in zip(outs, names)]
        inits, self.inits = self.inits, outer
        return oh.make_graph(nodes, self.fresh("arm"), [],
                             [oh.make_tensor_value_info(o, F, None) for o in names], inits)

    def if_(self, x: str, depth: int) -> tuple[list, str]:
        """`If(mean(x) > 0)` or `If(max(x) > 1)` over two arms built on x, sometimes with
        a second output (a graph output)."""
        op, t = self.draw(st.sampled_from([("ReduceMean", "zero"), ("ReduceMax", "one")]))
        r, c, out = self.fresh("red"), self.fresh("cond"), self.fresh("if")
        second = self.draw(st.sampled_from([None, None, "outer", "first"])) if not depth \
            else None
        outs = [out] + ([] if second is None else [self.fresh("if2_")])
        self.extra += outs[1:]
        return [oh.make_node(op, [x], [r], name=r, keepdims=0),
                oh.make_node("Greater", [r, t], [c], name=c),
                oh.make_node("If", [c], outs, name=out,
                             then_branch=self.arm(x, depth, second),
                             else_branch=self.arm(x, depth, second))], out

    def loop(self, x: str, depth: int) -> tuple[list, str]:
        """`Loop` twice: v = conv(v) (+ relu), sometimes + x (an outer value) after it."""
        v, it, cin, cout = (self.fresh(t) for t in ("lv", "it", "cin", "cout"))
        outer, self.inits = self.inits, []
        nodes, h = self.conv(v, self.c, self.draw(st.booleans()))
        if self.draw(st.booleans()):
            out = self.fresh("ladd")
            nodes.append(oh.make_node("Add", [h, x], [out], name=out))
            h = out
        vo = self.fresh("lvo")
        nodes += [oh.make_node("Identity", [h], [vo], name=vo),
                  oh.make_node("Identity", [cin], [cout], name=cout)]
        inits, self.inits = self.inits, outer
        body = oh.make_graph(nodes, self.fresh("body"), [
            oh.make_tensor_value_info(it, I64, []),
            oh.make_tensor_value_info(cin, TensorProto.BOOL, []),
            oh.make_tensor_value_info(v, F, None)], [
            oh.make_tensor_value_info(cout, TensorProto.BOOL, []),
            oh.make_tensor_value_info(vo, F, None)], inits)
        out = self.fresh("loop")
        return [oh.make_node("Loop", ["trips", "true", x], [out], name=out, body=body)], out

    def heads(self, y: str) -> tuple[list, list]:
        """Outputs read from the If's result y: y itself, its channel means (pooled,
        ReduceMean over H, W kept or dropped, axes either way), a conv of y, a residual
        sum of a conv of y and y."""
        nodes, outs = [], []
        for kind in self.draw(st.lists(st.sampled_from(
                ["gap", "mean", "mean", "mean_neg", "mean_keep", "conv", "residual"]),
                max_size=3)):
            out = self.fresh(kind)
            if kind == "gap":
                nodes.append(oh.make_node("GlobalAveragePool", [y], [out], name=out))
            elif kind.startswith("mean"):
                axes = [-2, -1] if kind == "mean_neg" else [2, 3]
                nodes.append(oh.make_node("ReduceMean", [y], [out], name=out, axes=axes,
                                          keepdims=int(kind == "mean_keep")))
            else:
                more, h = self.conv(y, self.c, kind == "conv")
                nodes += more
                if kind == "residual":
                    nodes.append(oh.make_node("Add", [h, y], [out], name=out))
                else:
                    nodes.append(oh.make_node("Identity", [h], [out], name=out))
            outs.append(out)
        return nodes, outs


@st.composite
def gated_convs(draw):
    """x [1, Cin, H, W] -> conv (+ relu) -> `If`s (nested up to 2 deep) whose arms hold
    convs, residual blocks (Add + Relu), pools added back, `Loop`s of convs; after them
    pools, ReduceMeans over H, W, convs and residual sums. C in {4, 8, 12, 16, 24, 32}:
    multiples of the blocks (8, 16) and not."""
    rng = np.random.default_rng(draw(SEEDS))
    cin = draw(st.sampled_from([3, 8, 16]))
    c = draw(st.sampled_from([4, 8, 12, 16, 16, 24, 32, 32]))
    hw = draw(st.sampled_from([(4, 4), (5, 7), (8, 8)]))
    b = _Convs(draw, rng, c)
    nodes, r0 = b.conv("x", cin, draw(st.booleans()))
    more, y = b.if_(r0, 0)
    nodes += more
    for _ in range(draw(st.integers(0, 1))):  # a second gate in a row
        more, y = b.block(y, 1) if draw(st.booleans()) else b.if_(y, 0)
        nodes += more
    more, outs = b.heads(y)
    nodes += more
    inits = b.inits + [numpy_helper.from_array(np.array(v, np.float32), name)
                       for name, v in (("zero", 0.0), ("one", 1.0))] + [
        numpy_helper.from_array(np.array(2, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "true")]
    m = _model(nodes, [oh.make_tensor_value_info("x", F, [1, cin, *hw])],
               [oh.make_tensor_value_info(o, F, None) for o in [y] + outs + b.extra], inits)
    return m, rng


def _conv_feeds(m: onnx.ModelProto, rng, count: int = 6) -> list:
    """Inputs of `m` around 0 (shifted: both sides of every gate), some with a few NaN,
    +-inf or +-0 among them."""
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    feeds = []
    for k in range(count):
        x = rng.standard_normal(shape) + rng.choice([-1.0, 0.0, 1.0])
        if k % 3 == 2:
            x = np.where(rng.random(shape) < 0.02, rng.choice(SPECIALS, shape), x)
        feeds.append({"x": np.asarray(x, np.float32)})
    return feeds


def _optimized(m: onnx.ModelProto) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    """A session of `m` as dycomp makes it (ONNX Runtime optimizes it for this CPU), and
    the optimized model it runs (what `blocked_across_branches` rewrites)."""
    import os
    import tempfile

    from dycomp.runtime.onnx_executor import session_options

    with tempfile.TemporaryDirectory() as d:
        o = session_options(1)
        o.optimized_model_filepath = os.path.join(d, "m.onnx")
        own = ort.InferenceSession(m.SerializeToString(), o,
                                   providers=["CPUExecutionProvider"])
        return own, onnx.load(o.optimized_model_filepath)


def _reassociated(m: onnx.ModelProto) -> tuple[int, int]:
    """How many blocked pools and convolutions with a fused sum `m` has: the kernels
    that sum in another order than the plain nodes they replace."""
    from dycomp.runtime.onnx_layout import NCHWC, all_nodes

    nodes = [n for n in all_nodes(m.graph) if n.domain == NCHWC]
    return (sum(n.op_type == "GlobalAveragePool" for n in nodes),
            sum(n.op_type == "Conv" and len(n.input) == 4 for n in nodes))


@SETTINGS
@given(gated_convs())
def test_blocked_layout_across_branches_matches(case):
    """ONNX Runtime's optimized graph for this CPU, with and without blocked values
    crossing `If` boundaries: the same outputs, bitwise, unless the rewrite pools a value
    blocked that ONNX Runtime pooled plain or fuses a residual sum into a convolution
    (as ONNX Runtime does within one graph: its NCHWc kernels then sum in another
    order, 1 ulp apart here): then within 1e-5, NaN and infinities where they were."""
    from dycomp.runtime.onnx_layout import across_branches, static_shapes

    m, rng = case
    own, optimized = _optimized(m)
    relaid = _copy(optimized)
    if not across_branches(relaid, static_shapes(m)):
        return
    exact = _reassociated(relaid) == _reassociated(optimized)
    rewritten = _session(relaid)
    for feed in _conv_feeds(m, rng):
        got, want = rewritten.run(None, feed), own.run(None, feed)
        if exact:
            _same(got, want)
        else:
            _close(got, want)


def _close(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)

