"""`fold_sums_into_gemms` at the edges of its matching (written while trying it as
`onnxscript.rewriter` patterns, which raised on the first case): a block whose sum
reads the block's own intermediate value, and a model with no sum after a `Gemm` left
as it was."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from dycomp.backends.onnx_gemm_sums import fold_sums_into_gemms

N = 6
F = TensorProto.FLOAT


def _inits(rng) -> list:
    return [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k)
            for k, s in (("w1", (N, N)), ("b1", (N,)), ("w2", (N, N)), ("b2", (N,)))] + [
        numpy_helper.from_array(np.ones(N, np.float32), "ln_s")]


def _block(x: str, bias2: bool = True) -> list:
    """LayerNorm(h) -> Gemm -> Relu -> Gemm, summed with `x` (a name of the block)."""
    return [oh.make_node("LayerNormalization", ["h", "ln_s"], ["hn"]),
            oh.make_node("Gemm", ["hn", "w1", "b1"], ["g1"], transB=1),
            oh.make_node("Relu", ["g1"], ["a"]),
            oh.make_node("Gemm", ["a", "w2"] + (["b2"] if bias2 else []), ["g2"], transB=1),
            oh.make_node("Add", [x, "g2"], ["y"])]


def _model(nodes, inits) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("h", F, [1, N])],
                      [oh.make_tensor_value_info("y", F, [1, N])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def _same_outputs(m: onnx.ModelProto, expected_folds: int) -> None:
    folded = onnx.ModelProto()
    folded.CopyFrom(m)
    assert fold_sums_into_gemms(folded) == expected_folds
    onnx.checker.check_model(folded)
    rng = np.random.default_rng(0)
    runs = [ort.InferenceSession(x.SerializeToString(), providers=["CPUExecutionProvider"])
            for x in (m, folded)]
    for _ in range(5):
        feed = {i.name: rng.standard_normal((1, N)).astype(np.float32)
                for i in runs[0].get_inputs()}
        a, b = (r.run(None, feed)[0] for r in runs)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x,bias2,folds", [
    ("a", True, 0),  # relu(fc1) + fc2(relu(fc1)): the relu the rewrite drops is the sum's x
    ("g1", True, 0),
    ("a", False, 1),  # fc2 without bias: Gemm(a, w2, C=a), nothing dropped that x is
    ("hn", True, 1),
])
def test_a_sum_of_the_blocks_own_value(x, bias2, folds):
    _same_outputs(_model(_block(x, bias2), _inits(np.random.default_rng(1))), folds)


def test_no_sum_after_a_gemm_leaves_the_model_as_it_was():
    m = _model([oh.make_node("Gemm", ["h", "w1", "b1"], ["g1"], transB=1),
                oh.make_node("Mul", ["g1", "h"], ["y"])], _inits(np.random.default_rng(3)))
    before = m.SerializeToString()
    assert fold_sums_into_gemms(m) == 0 and m.SerializeToString() == before
