"""Differential property tests of the ONNX graph rewrites: random graphs of the shapes
each rewrite matches, run by ONNX Runtime (one thread, graph optimizations off) before
and after the rewrite on random inputs with NaN and infinities mixed in. Rewrites that
keep the float operations compare exactly (NaN == NaN); those that reorder float sums
(`fold_sums_into_gemms`) with allclose, NaN and infinities in the same places."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from dycomp.backends.onnx_build import dedupe
from dycomp.backends.onnx_conditions import drop_condition_reshapes
from dycomp.backends.onnx_gemm_sums import fold_sums_into_gemms
from dycomp.backends.onnx_thresholds import fold_thresholds

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
F = TensorProto.FLOAT
SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)


def _opts() -> ort.SessionOptions:
    o = ort.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    o.log_severity_level = 3
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return o


def _run(m: onnx.ModelProto, feed: dict) -> list:
    s = ort.InferenceSession(m.SerializeToString(), _opts(),
                             providers=["CPUExecutionProvider"])
    return s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def _values(rng: np.random.Generator, shape, special: float = 0.2) -> np.ndarray:
    """float32 values of a few magnitudes, about `special` of them NaN, inf, -inf, +-0."""
    x = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3, shape)
    x = np.where(rng.random(shape) < special, rng.choice(SPECIALS, shape), x)
    return np.asarray(x, np.float32)


def _weights(rng, shape) -> np.ndarray:
    """Constant weights: normal, some exact zeros (a zero weight times inf is NaN)."""
    w = rng.standard_normal(shape).astype(np.float32)
    return np.where(rng.random(shape) < 0.2, np.float32(0), w)


def _same(got: list, expected: list, exact: bool = True) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype
        if exact:
            np.testing.assert_array_equal(a, b)
        else:  # NaN and infinities (signs included) where they were
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)


def _check(m: onnx.ModelProto, rewrite, feeds: list, exact: bool = True) -> int:
    """Rewrite a copy of `m`; the same outputs on every feed. Returns the rewrite's count."""
    r = _copy(m)
    done = rewrite(r)
    for feed in feeds:
        _same(_run(r, feed), _run(m, feed), exact)
    return done


SEEDS = st.integers(0, 2**32 - 1)


# --- fold_sums_into_gemms: allclose (the bias is added in another order) ---------------

@st.composite
def residual_blocks(draw):
    """x + Gemm(act(Gemm(h, w1, b1)), w2, b2) in its variants; (model, folds)."""
    rng = np.random.default_rng(draw(SEEDS))
    rows, n, hid = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    act = draw(st.sampled_from(["Relu", None, "Tanh"]))
    t1, t2, bias1, bias2 = (draw(st.booleans()) for _ in range(4))
    bias2_2d = bias2 and draw(st.booleans())  # a [1, n] bias: not folded
    x_rows = draw(st.sampled_from([1, rows]))
    inits = [numpy_helper.from_array(_weights(rng, (hid, n) if t1 else (n, hid)), "w1"),
             numpy_helper.from_array(_weights(rng, (n, hid) if t2 else (hid, n)), "w2"),
             numpy_helper.from_array(_weights(rng, (hid,)), "b1"),
             numpy_helper.from_array(_weights(rng, (1, n) if bias2_2d else (n,)), "b2")]
    norm = draw(st.booleans())  # fc1 reads LayerNorm(h): never infinite
    inits += [numpy_helper.from_array(_weights(rng, (n,)) * 3, "ln_s"),
              numpy_helper.from_array(_weights(rng, (n,)), "ln_b")]
    mid, h = "a" if act else "g1", "hn" if norm else "h"
    nodes = [oh.make_node("LayerNormalization", ["h", "ln_s", "ln_b"], ["hn"])] if norm else []
    nodes += [oh.make_node("Gemm", [h, "w1"] + (["b1"] if bias1 else []), ["g1"], transB=t1)]
    nodes += [oh.make_node(act, ["g1"], ["a"])] if act else []
    nodes += [oh.make_node("Gemm", [mid, "w2"] + (["b2"] if bias2 else []), ["g2"],
                           transB=t2),
              oh.make_node("Add", ["x", "g2"] if draw(st.booleans()) else ["g2", "x"], ["y"])]
    m = _model(nodes, [oh.make_tensor_value_info("h", F, [rows, n]),
                       oh.make_tensor_value_info("x", F, [x_rows, n])],
               [oh.make_tensor_value_info("y", F, [rows, n])], inits)
    folds = not bias2_2d and not (bias2 and (act == "Tanh" or not norm))
    return m, folds, rng


@st.composite
def gathered_sums(draw):
    """Gemm(h, w, b) + table[i], i a scalar or one index per row; (model, folds)."""
    rng = np.random.default_rng(draw(SEEDS))
    rows, n, k, size = (draw(st.integers(1, 4)) for _ in range(4))
    trans, bias, per_row = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    inits = [numpy_helper.from_array(_weights(rng, (n, k) if trans else (k, n)), "w"),
             numpy_helper.from_array(_weights(rng, (n,)), "b"),
             numpy_helper.from_array(_weights(rng, (size, n)), "table")]
    nodes = [oh.make_node("Gemm", ["h", "w"] + (["b"] if bias else []), ["g"], transB=trans),
             oh.make_node("Gather", ["table", "i"], ["row"]),
             oh.make_node("Add", ["g", "row"] if draw(st.booleans()) else ["row", "g"], ["y"])]
    m = _model(nodes, [oh.make_tensor_value_info("h", F, [rows, k]),
                       oh.make_tensor_value_info("i", TensorProto.INT64,
                                                 [rows] if per_row else [])],
               [oh.make_tensor_value_info("y", F, [rows, n])], inits)
    return m, size, per_row, rng


def _feeds(m: onnx.ModelProto, rng, count: int = 3, index: int = 0, special: float = 0.2):
    """`count` feeds of `m`'s inputs: floats with `special` of them NaN, +-inf or +-0;
    int64 indices below `index`."""
    out = []
    for _ in range(count):
        feed = {}
        for v in m.graph.input:
            shape = [d.dim_value for d in v.type.tensor_type.shape.dim]
            if v.type.tensor_type.elem_type == TensorProto.INT64:
                feed[v.name] = np.asarray(rng.integers(0, index, shape), np.int64)
            elif v.type.tensor_type.elem_type == TensorProto.BOOL:
                feed[v.name] = np.asarray(rng.random(shape) < 0.5)
            else:
                feed[v.name] = _values(rng, shape, special)
        out.append(feed)
    return out


@SETTINGS
@given(residual_blocks())
def test_residual_sum_into_gemm_matches(case):
    """A residual MLP's sum as the second Gemm's C: the same outputs (allclose, NaN and
    infinities where they were), folded exactly when the form allows it."""
    m, folds, rng = case
    assert _check(m, fold_sums_into_gemms, _feeds(m, rng), exact=False) == folds


@SETTINGS
@given(gathered_sums())
def test_gathered_sum_into_gemm_matches(case):
    """`fc(h) + table[i]` as Gemm(h, w, (table + b)[i]): the same outputs (allclose)."""
    m, size, per_row, rng = case
    assert _check(m, fold_sums_into_gemms, _feeds(m, rng, index=size), exact=False) == 1


# --- fold_thresholds: exact ------------------------------------------------------------

CONSTANTS = st.one_of(
    st.floats(-4.0, 4.0, width=32), st.floats(width=32),
    st.sampled_from([0.0, -0.0, 1.0, 1e-40, -1e-40, 3.4e38, np.inf, np.nan]))
STEPS = st.lists(st.tuples(st.sampled_from(["Sqrt", "Mul", "Div", "Add", "Sub"]),
                           CONSTANTS, st.booleans()), min_size=1, max_size=4)
K = 512


def _threshold_model(steps, compare, t, t_shape) -> onnx.ModelProto:
    nodes, cur = [], "v"
    inits = [numpy_helper.from_array(np.full(t_shape, t, np.float32), "t")]
    for i, (op, c, first) in enumerate(steps):
        if op == "Sqrt":
            nodes.append(oh.make_node("Sqrt", [cur], [f"s{i}"]))
        else:
            inits.append(numpy_helper.from_array(np.array(c, np.float32), f"c{i}"))
            nodes.append(oh.make_node(op, [f"c{i}", cur] if first else [cur, f"c{i}"],
                                      [f"s{i}"]))
        cur = f"s{i}"
    nodes.append(oh.make_node(compare, [cur, "t"], ["out"]))
    return _model(nodes, [oh.make_tensor_value_info("v", F, [K])],
                  [oh.make_tensor_value_info("out", TensorProto.BOOL, [K])], inits)


def _near(bounds, rng) -> np.ndarray:
    """Values a few ulps around each bound, specials and a spread over 80 decades."""
    near = []
    for b in bounds:
        x = np.float32(b)
        near.append(x)
        for direction in (np.inf, -np.inf):
            y = x
            for _ in range(12):
                with np.errstate(over="ignore"):
                    y = np.nextafter(y, np.float32(direction))
                near.append(y)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38]
    spread = rng.standard_normal(K) * 10.0 ** rng.uniform(-40, 38, K)
    return np.resize(np.array(near + special + list(spread), np.float32), K)


@SETTINGS
@given(STEPS, st.sampled_from(["Greater", "GreaterOrEqual"]), CONSTANTS,
       st.sampled_from([(), (1,)]), SEEDS)
def test_threshold_fold_matches(steps, compare, t, t_shape, seed):
    """`f(v) > t` as `v > bound`: the same decision on values ulps around the bound,
    around `t`, on specials and a spread (exact)."""
    m = _threshold_model(steps, compare, t, t_shape)
    r = _copy(m)
    fold_thresholds(r)
    bounds = [float(numpy_helper.to_array(x).reshape(())) for x in r.graph.initializer
              if x.name.endswith("__bound")]
    v = _near(bounds + [t], np.random.default_rng(seed))
    _same(_run(r, {"v": v}), _run(m, {"v": v}))


# --- drop_condition_reshapes: exact ----------------------------------------------------

@st.composite
def condition_graphs(draw):
    """If(logic(Compare(Reshape(x, []), c)), y, -y), x one element of any rank, the
    comparison or the reshape sometimes also an output (then kept)."""
    rng = np.random.default_rng(draw(SEEDS))
    x_shape = draw(st.sampled_from([[1], [1, 1], [1, 1, 1], []]))
    c_shape = draw(st.sampled_from([(), (1,), (1, 1)]))
    op = draw(st.sampled_from(["Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"]))
    c = draw(CONSTANTS)
    inits = [numpy_helper.from_array(np.full(c_shape, c, np.float32), "c"),
             numpy_helper.from_array(np.zeros(0, np.int64), "to0d")]
    nodes = [oh.make_node("Reshape", ["x", "to0d"], ["x0"]),
             oh.make_node(op, ["x0", "c"] if draw(st.booleans()) else ["c", "x0"], ["cmp"])]
    cond = "cmp"
    for i, logic in enumerate(draw(st.lists(st.sampled_from(["Not", "And", "Or", "Xor"]),
                                            max_size=2))):
        ins = [cond] if logic == "Not" else [cond, "b"]
        nodes.append(oh.make_node(logic, ins, [f"l{i}"]))
        cond = f"l{i}"
    then = oh.make_graph([oh.make_node("Identity", ["y"], ["t"])], "then", [],
                         [oh.make_tensor_value_info("t", F, [2])])
    other = oh.make_graph([oh.make_node("Neg", ["y"], ["e"])], "else", [],
                          [oh.make_tensor_value_info("e", F, [2])])
    nodes.append(oh.make_node("If", [cond], ["z"], then_branch=then, else_branch=other))
    outs = [oh.make_tensor_value_info("z", F, [2])]
    extra = draw(st.sampled_from([None, None, "cmp", "x0"]))
    if extra == "cmp":
        outs.append(oh.make_tensor_value_info("cmp", TensorProto.BOOL, None))
    elif extra == "x0":
        outs.append(oh.make_tensor_value_info("x0", F, None))
    m = _model(nodes, [oh.make_tensor_value_info("x", F, x_shape),
                       oh.make_tensor_value_info("b", TensorProto.BOOL, []),
                       oh.make_tensor_value_info("y", F, [2])], outs, inits)
    return m, extra is None, rng


@SETTINGS
@given(condition_graphs())
def test_condition_reshape_drop_matches(case):
    """A comparison of the one-element value itself where only `If` conditions read it:
    the same outputs (exact), bypassed only when no output reads the 0-d values."""
    m, drops, rng = case
    feeds = _feeds(m, rng, count=4)
    assert _check(m, lambda r: drop_condition_reshapes(r.graph), feeds) == drops


@st.composite
def loop_condition_graphs(draw):
    """Loop(3, Reshape(logic(Compare(Reshape(x, []), c)), []), y) adding `y` to itself per
    iteration: a Loop's starting condition through the 0-d reshape that keeps its rank
    known to ONNX Runtime (`Builder.loop_node`); x one element of any rank."""
    rng = np.random.default_rng(draw(SEEDS))
    x_shape = draw(st.sampled_from([[1], [1, 1], []]))
    op = draw(st.sampled_from(["Greater", "Less", "Equal"]))
    inits = [numpy_helper.from_array(np.full((), draw(CONSTANTS), np.float32), "c"),
             numpy_helper.from_array(np.zeros(0, np.int64), "to0d"),
             numpy_helper.from_array(np.array(3, np.int64), "trips")]
    nodes = [oh.make_node("Reshape", ["x", "to0d"], ["x0"]),
             oh.make_node(op, ["x0", "c"], ["cmp"])]
    cond = "cmp"
    if draw(st.booleans()):
        nodes.append(oh.make_node("Not", [cond], ["n0"]))
        cond = "n0"
    nodes.append(oh.make_node("Reshape", [cond, "to0d"], ["go0"]))
    body = oh.make_graph(
        [oh.make_node("Add", ["acc_in", "acc_in"], ["acc_out"]),
         oh.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []),
         oh.make_tensor_value_info("cond_in", TensorProto.BOOL, None),
         oh.make_tensor_value_info("acc_in", F, None)],
        [oh.make_tensor_value_info("cond_out", TensorProto.BOOL, None),
         oh.make_tensor_value_info("acc_out", F, None)])
    nodes.append(oh.make_node("Loop", ["trips", "go0", "y"], ["z"], body=body))
    m = _model(nodes, [oh.make_tensor_value_info("x", F, x_shape),
                       oh.make_tensor_value_info("y", F, [2])],
               [oh.make_tensor_value_info("z", F, [2])], inits)
    return m, rng


@SETTINGS
@given(loop_condition_graphs())
def test_loop_condition_reshape_drop_matches(case):
    """The comparison's own reshape goes (it only decides the Loop), the one in front of
    the Loop stays; the same outputs, exact, NaN and infinities included."""
    m, rng = case
    feeds = _feeds(m, rng, count=4)
    assert _check(m, lambda r: drop_condition_reshapes(r.graph), feeds) == 1
    # what is left: one Reshape, the Loop's
    r = _copy(m)
    drop_condition_reshapes(r.graph)
    readers = {x for n in r.graph.node for x in n.input}
    live = [n for n in r.graph.node if n.op_type == "Reshape" and n.output[0] in readers]
    assert [n.output[0] for n in live] == ["go0"]


# --- dedupe: exact ---------------------------------------------------------------------

UNARY, BINARY = ["Relu", "Neg", "Abs", "Exp", "Sqrt"], ["Add", "Mul", "Sub", "Max", "Div"]


@st.composite
def repeated_graphs(draw):
    """Random elementwise DAGs over inputs, equal initializers under several names and
    repeated nodes, in the graph and in the arms of an `If` reading it."""
    rng = np.random.default_rng(draw(SEEDS))
    inits, names = [], ["a", "b"]
    value = _weights(rng, (3,))
    for i in range(draw(st.integers(0, 3))):  # equal constants under other names
        v = value if draw(st.booleans()) else _weights(rng, (3,))
        inits.append(numpy_helper.from_array(v, f"k{i}"))
        names.append(f"k{i}")

    def body(prefix, avail, count):
        nodes, made = [], []
        for i in range(count):
            if nodes and draw(st.integers(0, 2)) == 0:  # a repeat of an earlier node
                old = nodes[draw(st.integers(0, len(nodes) - 1))]
                n = oh.make_node(old.op_type, list(old.input), [f"{prefix}{i}"])
                n.attribute.extend(old.attribute)
            elif draw(st.booleans()):
                n = oh.make_node(draw(st.sampled_from(UNARY)),
                                 [draw(st.sampled_from(avail))], [f"{prefix}{i}"])
            else:
                n = oh.make_node(draw(st.sampled_from(BINARY)),
                                 [draw(st.sampled_from(avail)) for _ in range(2)],
                                 [f"{prefix}{i}"])
            nodes.append(n)
            avail = avail + [n.output[0]]
            made.append(n.output[0])
        return nodes, made

    nodes, made = body("n", names, draw(st.integers(1, 8)))
    outs = draw(st.lists(st.sampled_from(made), min_size=1, max_size=3))
    if draw(st.booleans()):  # an If whose arms repeat the graph's nodes
        arms = []
        for arm in ("t", "e"):
            inner, inner_made = body(arm, names + made, draw(st.integers(1, 5)))
            copies = [_copy_node(n, arm) for n in nodes[:draw(st.integers(0, len(nodes)))]]
            picks = draw(st.lists(st.sampled_from(inner_made + [n.output[0] for n in copies]),
                                  min_size=2, max_size=2))
            ids = [oh.make_node("Identity", [p], [f"{arm}_o{j}"]) for j, p in enumerate(picks)]
            arms.append(oh.make_graph(
                copies + inner + ids, arm, [],
                [oh.make_tensor_value_info(f"{arm}_o{j}", F, [3]) for j in range(2)]))
        nodes.append(oh.make_node("If", ["c"], ["if0", "if1"], then_branch=arms[0],
                                  else_branch=arms[1]))
        outs += ["if0", "if1"]
    m = _model(nodes, [oh.make_tensor_value_info(x, F, [3]) for x in ("a", "b")]
               + [oh.make_tensor_value_info("c", TensorProto.BOOL, [])],
               [oh.make_tensor_value_info(o, F, [3]) for o in dict.fromkeys(outs)], inits)
    return m, rng


def _copy_node(n: onnx.NodeProto, prefix: str) -> onnx.NodeProto:
    c = onnx.NodeProto()
    c.CopyFrom(n)
    c.output[:] = [f"{prefix}_{o}" for o in n.output]
    return c


@SETTINGS
@given(repeated_graphs())
def test_dedupe_matches(case):
    """Equal nodes and initializers merged: the same outputs (exact), the graph still
    valid for ONNX Runtime."""
    m, rng = case
    _check(m, lambda r: dedupe(r.graph), _feeds(m, rng, count=2))


def test_residual_bias_unit_refused_where_h_may_be_infinite():
    """The counterexample fuzzing found: fc1 reading h itself, h = -inf, w1 = 1:
    relu(-inf) = 0 and y = x + b2 is finite, while fc1's extra unit would be
    relu(0 * -inf + 1) = NaN, and y NaN. Not folded; folded behind a LayerNormalization,
    which never gives an infinity."""
    inits = [numpy_helper.from_array(np.ones((1, 1), np.float32), w) for w in ("w1", "w2")]
    inits += [numpy_helper.from_array(np.ones(1, np.float32), b) for b in ("b1", "b2", "s")]
    for norm in (False, True):
        nodes = [oh.make_node("LayerNormalization", ["h", "s", "b1"], ["hn"])] if norm else []
        nodes += [oh.make_node("Gemm", ["hn" if norm else "h", "w1", "b1"], ["g1"]),
                  oh.make_node("Relu", ["g1"], ["a"]),
                  oh.make_node("Gemm", ["a", "w2", "b2"], ["g2"]),
                  oh.make_node("Add", ["x", "g2"], ["y"])]
        m = _model(nodes, [oh.make_tensor_value_info(v, F, [1, 1]) for v in ("h", "x")],
                   [oh.make_tensor_value_info("y", F, [1, 1])], inits)
        feed = {"h": np.array([[-np.inf]], np.float32), "x": np.array([[2.0]], np.float32)}
        assert _check(m, fold_sums_into_gemms, [feed], exact=False) == norm
        assert np.isfinite(_run(m, feed)[0]).all() != norm  # LayerNorm(-inf) is NaN


# --- lower_adaptive_pools (before export): allclose (means over windows, summed in another order)
@st.composite
def adaptive_pools(draw):
    rank = draw(st.sampled_from([1, 2]))
    dims = [draw(st.integers(1, 9)) for _ in range(rank)]
    out = [draw(st.integers(1, d)) for d in dims]
    return rank, dims, out, draw(SEEDS)


def _traced_pool(case):
    """The drawn pool, an input with NaN / inf, and the pool traced with its example."""
    import torch
    from torch import fx, nn

    rank, dims, out, seed = case
    pool = (nn.AdaptiveAvgPool1d if rank == 1 else nn.AdaptiveAvgPool2d)(out[0] if rank == 1
                                                                          else tuple(out))
    x = torch.from_numpy(_values(np.random.default_rng(seed), [1, 3, *dims]))
    gm = fx.symbolic_trace(nn.Sequential(pool))
    next(iter(gm.graph.nodes)).meta["example"] = x
    return pool, x, gm


@settings(max_examples=200, deadline=None, derandomize=True)
@given(adaptive_pools())
def test_adaptive_pool_lowering_matches(case):
    from dycomp.backends.onnx_pools import lower_adaptive_pools

    rank, dims, out, _ = case
    pool, x, gm = _traced_pool(case)
    lowered = lower_adaptive_pools(gm)
    divides = all(d % o == 0 for d, o in zip(dims, out))
    assert (lowered is gm) == divides  # only non-dividing pools are rewritten
    _same([lowered(x).numpy()], [pool(x).numpy()], exact=False)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(adaptive_pools())
def test_adaptive_pool_lowering_in_dynamic_regions_matches(case):
    """`dynamic=True` (a region exported with dynamic axes, its pooled dims static):
    dividing pools are lowered too, all but 1x1 outputs."""
    from dycomp.backends.onnx_pools import lower_adaptive_pools

    rank, dims, out, _ = case
    pool, x, gm = _traced_pool(case)
    lowered = lower_adaptive_pools(gm, dynamic=True)
    assert (lowered is gm) == all(o == 1 for o in out)
    _same([lowered(x).numpy()], [pool(x).numpy()], exact=False)


# --- lower_bicubic (before export): allclose (same taps, weights to float32 rounding) ---
@st.composite
def bicubic_calls(draw):
    dims = [draw(st.integers(1, 12)) for _ in range(2)]
    align = draw(st.booleans())
    if draw(st.booleans()):
        call = {"size": [draw(st.integers(1, 16)) for _ in range(2)]}
    else:
        call = {"scale_factor": [draw(st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.0]))
                                 for _ in range(2)],
                "recompute_scale_factor": draw(st.sampled_from([None, True]))}
    return dims, align, call, draw(st.booleans()), draw(SEEDS)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(bicubic_calls())
def test_bicubic_lowering_matches(case):
    """Every bicubic interpolation of a static input is rewritten (the taps match
    PyTorch's operator), and reads the same inputs: NaN and inf land where they did."""
    import torch
    import torch.nn.functional as F
    from torch import fx, nn

    from dycomp.backends.onnx_resize import cubic_1d, lower_bicubic

    dims, align, call, as_module, seed = case
    kw = dict(call, mode="bicubic", align_corners=align)

    class Interp(nn.Module):
        def forward(self, x):
            return F.interpolate(x, **kw)

    model = nn.Sequential(nn.Upsample(**{k: v for k, v in kw.items()
                                         if k != "recompute_scale_factor"}) if as_module
                          and "recompute_scale_factor" not in call else Interp())
    x = torch.from_numpy(_values(np.random.default_rng(seed), [1, 2, *dims]))
    try:
        expected = model(x)
    except (RuntimeError, ValueError):  # an output size of 0: PyTorch refuses it
        return
    gm = fx.symbolic_trace(model)
    nodes = list(gm.graph.nodes)
    nodes[0].meta["example"], nodes[1].meta["example"] = x, expected
    lowered = lower_bicubic(gm)
    assert lowered is not gm
    assert sum(n.target is cubic_1d for n in lowered.graph.nodes) == 2
    _same([lowered(x).numpy()], [expected.numpy()], exact=False)


# --- rows variants (dycomp/batching_variant.py): per-row forms == each row alone -------
ROW_FORMS = [lambda x: x.max(), lambda x: x.mean() > 0.1, lambda x: x.std(),
             lambda x: x.argmax(), lambda x: x.any(), lambda x: x.norm() > 1,
             lambda x: (x.sum() * 2 - 1).sigmoid(), lambda x: x[0, 1],
             lambda x: x.sum(1).reshape(()), lambda x: x.view(1, 3) + 1,
             lambda x: (x.abs().sum(), x * 3), lambda x: x.sum(1).max(),
             lambda x: torch_reshape_sum(x), lambda x: x.amin() + x.prod(),
             lambda x: x.all(), lambda x: x.count_nonzero()]


def torch_reshape_sum(x):
    import torch

    return torch.reshape(x, (1, 3)).sum() * 2


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, len(ROW_FORMS) - 1), st.integers(1, 6), SEEDS)
def test_rows_variant_matches_each_row(form, n, seed):
    """A region's rows variant on n joined rows (NaN, inf, +-0 among the values) gives
    each row what the region gives that row alone (`check_torch` raises otherwise)."""
    import torch

    from dycomp.batching_rows import ROWS, State
    from dycomp.batching_variant import build_variant, check_torch, references
    from tests.test_batch_rows import _graph

    gm = _graph(ROW_FORMS[form], torch.randn(1, 3))
    variant, kinds = build_variant(gm, [State(ROWS)])
    x = torch.from_numpy(_values(np.random.default_rng(seed), [n, 3]))
    rows = [(x[i:i + 1],) for i in range(n)]
    check_torch(gm, variant, kinds, rows, references(gm, rows))


# --- lower_grouped: torch._grouped_mm and torch.histc before export ---------------------

@st.composite
def grouped_cases(draw):
    """Rows `a` [S, K], weights [G, K, N], nondecreasing offsets ending at most at S; a
    histogram's bins and bounds; values with NaN, +-inf and +-0."""
    s, g = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    k, n = (draw(st.sampled_from([4, 8])) for _ in range(2))  # the kernel's 16-byte strides
    offs = sorted(draw(st.lists(st.integers(0, s), min_size=g, max_size=g)))
    lo = draw(st.floats(-3, 2, width=32))
    hi = lo + draw(st.floats(0.25, 4, width=32))
    return s, k, n, offs, draw(st.integers(1, 7)), lo, hi, draw(SEEDS)


@SETTINGS
@given(grouped_cases())
def test_grouped_lowering_matches(case):
    """Both ops are rewritten, and the rewrite computes what PyTorch's own ops compute:
    the grouped rows (those the offsets cover; NaN and inf where the kernel has them) and
    the histogram exactly (NaN and out-of-range values counted nowhere)."""
    import torch
    from torch import fx, nn

    from dycomp.backends.onnx_grouped import grouped_mm_rows, histc_bins, lower_grouped

    s, k, n, offs, bins, lo, hi, seed = case
    rng = np.random.default_rng(seed)

    class Grouped(nn.Module):
        def forward(self, a, w, o, x):
            return torch._grouped_mm(a, w, offs=o), torch.histc(x, bins=bins, min=lo, max=hi)

    inputs = (torch.from_numpy(_values(rng, [s, k])),
              torch.from_numpy(_values(rng, [len(offs), k, n])),
              torch.tensor(offs, dtype=torch.int32),
              torch.from_numpy(_values(rng, [3, 5]) * 3))
    expected = Grouped()(*inputs)
    gm = fx.symbolic_trace(Grouped())
    for node, x in zip([m for m in gm.graph.nodes if m.op == "placeholder"], inputs):
        node.meta["example"] = x
    lowered = lower_grouped(gm)
    targets = [m.target for m in lowered.graph.nodes if m.op == "call_function"]
    assert grouped_mm_rows in targets and histc_bins in targets
    rows, hist = lowered(*inputs)
    covered = offs[-1]
    torch.testing.assert_close(rows[:covered], expected[0][:covered], equal_nan=True,
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(rows[covered:], torch.zeros_like(rows[covered:]))
    assert torch.equal(hist, expected[1])
