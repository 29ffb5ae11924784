"""`fold_thresholds`: `f(v) > t` for monotone `f` as `v > b`, the same on every float32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import dycomp
from dycomp.backends.onnx_backend import all_nodes
from dycomp.backends.onnx_thresholds import fold_thresholds
from examples.zoo import ZOO

K = 4096


def _model(steps, compare="Greater", t=1.0) -> onnx.ModelProto:
    """out = compare(steps applied to v, t), v: float[K]; steps: (op, constant, the
    constant first) with op None for Sqrt; one constant computed from v's shape."""
    nodes, inits, cur = [], [numpy_helper.from_array(np.array(t, np.float32), "t")], "v"
    for i, (op, c, first) in enumerate(steps):
        if op is None:
            nodes.append(oh.make_node("Sqrt", [cur], [f"s{i}"]))
        else:
            inits.append(numpy_helper.from_array(np.array(c, np.float32), f"c{i}"))
            ins = [f"c{i}", cur] if first else [cur, f"c{i}"]
            nodes.append(oh.make_node(op, ins, [f"s{i}"]))
        cur = f"s{i}"
    # a divisor computed from the shape, as the exporter writes std's n - 1
    nodes += [oh.make_node("Shape", ["v"], ["shape"]),
              oh.make_node("ReduceProd", ["shape"], ["n"], keepdims=0),
              oh.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
              oh.make_node("Div", [cur, "nf"], ["scaled"]),
              oh.make_node(compare, ["scaled", "t"], ["out"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("v", TensorProto.FLOAT, [K])],
                      [oh.make_tensor_value_info("out", TensorProto.BOOL, [K])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def _run(m, v):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"v": v})[0]


def _probes(bound: float) -> np.ndarray:
    """float32 values around `bound` (ulps apart), special values, and a spread."""
    near = [bound]
    for direction in (np.inf, -np.inf):
        x = np.float32(bound)
        for _ in range(40):
            x = np.nextafter(x, np.float32(direction))
            near.append(x)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38]
    spread = np.random.default_rng(0).standard_normal(K) * np.logspace(-6, 6, K)
    return np.resize(np.array(near + special + list(spread), np.float32), K)


CASES = {  # case -> (steps, compare, t, the op left before the comparison)
    "std: sqrt(mean * c)": ([("Mul", 4096 / 4095, False), (None, 0, 0)], "Greater", 1.0, None),
    "affine, >=": ([("Add", 0.1, True), ("Mul", 3.0, False), ("Sub", 0.7, False)],
                   "GreaterOrEqual", 0.25, None),
    "sqrt, a negative threshold": ([(None, 0, 0)], "Greater", -0.5, None),
    "divided by a positive constant": ([("Div", 7.0, False)], "Greater", 1e-3, None),
    "times a negative constant: decreasing": ([("Mul", -2.0, False)], "Greater", 0.5, "Mul"),
    "c - v: decreasing": ([("Sub", 1.0, True)], "Greater", 0.5, "Sub"),
    "c / v: decreasing": ([("Div", 1.0, True)], "Greater", 0.5, "Div"),
    "less than: not folded": ([("Mul", 2.0, False)], "Less", 0.5, "Div"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_thresholds_fold_exactly(case):
    """The folded model gives the same decisions on float32 values a few ulps around the
    bound, specials (NaN, infinities, signed zeros) and a spread over 12 decades; the
    fold stops at an op that is not increasing (the shape-computed divisor after it
    still folds)."""
    steps, compare, t, left = CASES[case]
    model = _model(steps, compare, t)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_thresholds(folded) == (compare != "Less")
    (cmp,) = (n for n in folded.graph.node if n.op_type in ("Greater", "Less"))
    made = {o: n.op_type for n in folded.graph.node for o in n.output}
    assert made.get(cmp.input[0], "v") == (left or "v")
    bounds = [numpy_helper.to_array(x) for x in folded.graph.initializer
              if x.name.endswith("__bound")]
    v = _probes(float(bounds[0]) if bounds and left is None else t)
    expected = _run(model, v)
    np.testing.assert_array_equal(_run(folded, v), expected)
    assert expected.any() and not expected.all()  # the probes straddle the decision


def test_nested_if_decides_on_the_variance_itself():
    """`x.std() > t` in nested_if: the `Sqrt` and the scaling by n / (n - 1) are gone,
    the variance's mean is compared with a bound."""
    model, example = ZOO["nested_if"].make()
    cm = dycomp.compile(model, example, backend="onnx")
    (region,) = cm.graph.regions.values()
    ops = [n.op_type for n in all_nodes(region.onnx.graph)]
    assert "Sqrt" not in ops
    assert any(t.name.endswith("__bound") for t in region.onnx.graph.initializer)
