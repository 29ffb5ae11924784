"""`fold_sums_into_gemms`: a sum after a `Gemm` becomes its `C` input."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

import dycomp
from dycomp.backends.onnx_backend import all_nodes
from dycomp.backends.onnx_gemm_sums import fold_sums_into_gemms
from examples.zoo import ZOO

N, H = 8, 12


def _block(act="Relu", trans=(1, 1), bias2=True, x_rows=1, reuse=False, norm=True
           ) -> onnx.ModelProto:
    """y = x + Gemm(act(Gemm(LayerNorm(h), w1, b1)), w2, b2) on h, x: float[1, 8] (x:
    [x_rows, 8]; `norm=False`: no LayerNorm, fc1 reads h itself)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((H, N) if trans[0] else (N, H)).astype(np.float32)
    w2 = rng.standard_normal((N, H) if trans[1] else (H, N)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b2")]
    mid = "a" if act else "g1"
    inits += [numpy_helper.from_array(np.ones(N, np.float32), "ln_s"),
              numpy_helper.from_array(np.zeros(N, np.float32), "ln_b")]
    nodes = [oh.make_node("LayerNormalization", ["h", "ln_s", "ln_b"], ["hn"])] if norm else []
    nodes += [oh.make_node("Gemm", ["hn" if norm else "h", "w1", "b1"], ["g1"], transB=trans[0])]
    nodes += [oh.make_node(act, ["g1"], ["a"])] if act else []
    nodes += [oh.make_node("Gemm", [mid, "w2"] + (["b2"] if bias2 else []), ["g2"],
                           transB=trans[1]),
              oh.make_node("Add", ["x", "g2"], ["y"])]
    outs = ["y"] + (["g2"] if reuse else [])
    g = oh.make_graph(nodes, "block", [
        oh.make_tensor_value_info("h", TensorProto.FLOAT, [1, N]),
        oh.make_tensor_value_info("x", TensorProto.FLOAT, [x_rows, N])],
        [oh.make_tensor_value_info(o, TensorProto.FLOAT, [x_rows if o == "y" else 1, N])
         for o in outs], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def _in_if(m: onnx.ModelProto) -> onnx.ModelProto:
    """The block as the then arm of an `If` on a graph input (else: x)."""
    then = onnx.GraphProto()
    then.CopyFrom(m.graph)
    del then.input[:]
    other = oh.make_graph([oh.make_node("Identity", ["x"], ["z"])], "else", [],
                          [oh.make_tensor_value_info("z", TensorProto.FLOAT, [1, N])])
    g = oh.make_graph([oh.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                      "main", [*m.graph.input, oh.make_tensor_value_info("c", TensorProto.BOOL,
                                                                         [])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, feed: dict) -> list:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})


CASES = {  # case -> (model, folds expected)
    "relu": (_block(), 1),
    "no activation, weights not transposed": (_block(act=None, trans=(0, 0)), 1),
    "fc2 without bias": (_block(bias2=False), 1),
    "in an If arm": (_in_if(_block()), 1),
    "tanh: tanh(1) != 1": (_block(act="Tanh"), 0),
    "fc1 reads a value that may be infinite": (_block(norm=False), 0),
    "fc1 reads a value that may be infinite, fc2 without bias": (
        _block(bias2=False, norm=False), 1),
    "the sum broadcasts the Gemm's result": (_block(x_rows=3), 0),
    "the Gemm's result read twice": (_block(reuse=True), 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_residual_sums_fold_into_gemms_with_the_same_outputs(case):
    model, expected = CASES[case]
    rng = np.random.default_rng(1)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_sums_into_gemms(folded) == expected
    onnx.checker.check_model(folded)
    adds = [n for n in all_nodes(folded.graph) if n.op_type == "Add"]
    assert len(adds) == 1 - expected
    for i in range(8):
        feed = {"h": rng.standard_normal((1, N)).astype(np.float32) * (i + 1),
                "x": rng.standard_normal((3 if "broadcasts" in case else 1, N)).astype(
                    np.float32), "c": np.array(i % 2 == 0)}
        for a, b in zip(_run(model, feed), _run(folded, feed)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_gated54_blocks_end_in_their_second_gemm():
    """Each of gated54's 54 gated residual MLP blocks (an `If` arm) is LayerNorm, Gemm,
    Relu, Gemm: no `Add` left."""
    model, example = ZOO["gated54"].make()
    cm = dycomp.compile(model, example, backend="onnx")
    (region,) = cm.graph.regions.values()
    arms = [a.g for n in region.onnx.graph.node if n.op_type == "If" for a in n.attribute
            if a.name == "then_branch"]
    assert len(arms) == 54
    assert all([n.op_type for n in arm.node] == ["LayerNormalization", "Gemm", "Relu", "Gemm"]
               for arm in arms)
