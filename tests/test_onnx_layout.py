"""Blocked (NCHWc) values across `If` boundaries (`dycomp.runtime.onnx_layout`): the
rewritten session computes what ONNX Runtime's own graph computes, on every path, and
the reorders at the `If` boundaries are gone."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import dycomp
from dycomp.runtime import onnx_executor
from dycomp.runtime.onnx_executor import blocked_across_branches, new_session, session_options
from dycomp.runtime.onnx_layout import NCHWC, all_nodes
from examples.zoo import ZOO

C = 16  # a multiple of every NCHWc block size


def _model() -> bytes:
    """x -> conv+relu (r0) -> If mean(x) > 0:
         then: residual block on r0 (conv, relu, conv, + r0, relu), then a nested If
               max(x) > 2: the block's output or a conv+relu of it;
         else: r0 unchanged.
       Outputs: the If's output y, its channel means (ReduceMean over H, W), and a conv
       of y plus r0's channel means (a broadcast, not a residual: it must stay an Add)."""
    rng = np.random.default_rng(0)
    convs = {}

    def conv(x, out, cin=C):
        w = f"w{len(convs)}"
        convs[w] = nh.from_array(rng.standard_normal((C, cin, 3, 3)).astype(np.float32)
                                 * 0.2, w)
        return oh.make_node("Conv", [x, w], [out], pads=[1, 1, 1, 1]), convs[w]

    def arm(name, nodes, out):
        return oh.make_graph([n for n, _ in nodes], name, [],
                             [oh.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                             [i for _, i in nodes if i is not None])

    def op(*args, **kw):
        return oh.make_node(*args, **kw), None

    inner_then = arm("inner_then", [op("Identity", ["t4"], ["t5"])], "t5")
    inner_else = arm("inner_else", [conv("t4", "t6"), op("Relu", ["t6"], ["t7"])], "t7")
    then = arm("then", [conv("r0", "t1"), op("Relu", ["t1"], ["t1r"]), conv("t1r", "t2"),
                        op("Add", ["t2", "r0"], ["t3"]), op("Relu", ["t3"], ["t4"]),
                        op("If", ["cond2"], ["t8"], then_branch=inner_then,
                           else_branch=inner_else)], "t8")
    other = arm("else", [op("Identity", ["r0"], ["e0"])], "e0")
    nodes = [conv("x", "c0", cin=3), op("Relu", ["c0"], ["r0"]),
             op("ReduceMean", ["r0"], ["g"], axes=[2, 3], keepdims=1),
             op("ReduceMean", ["x"], ["mean"], keepdims=0),
             op("Greater", ["mean", "zero"], ["cond"]),
             op("ReduceMax", ["x"], ["max"], keepdims=0), op("Greater", ["max", "two"], ["cond2"]),
             op("If", ["cond"], ["y"], then_branch=then, else_branch=other),
             op("ReduceMean", ["y"], ["pooled"], axes=[2, 3], keepdims=0),
             conv("y", "z0"), op("Add", ["z0", "g"], ["z"])]
    inits = [i for _, i in nodes if i is not None] + [
        nh.from_array(np.array(0, np.float32), "zero"),
        nh.from_array(np.array(2, np.float32), "two")]
    g = oh.make_graph([n for n, _ in nodes], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                      [oh.make_tensor_value_info(o, TensorProto.FLOAT, None)
                       for o in ("y", "pooled", "z")], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


def _inputs():
    """Every path: mean(x) <= 0; mean > 0 with max <= 2 and with max > 2."""
    rng = np.random.default_rng(1)
    xs = []
    for shift, scale in ((-1.0, 1.0), (0.5, 0.3), (1.0, 1.0)):
        xs += [(rng.standard_normal((1, 3, 16, 16)) * scale + shift).astype(np.float32)
               for _ in range(4)]
    paths = {(x.mean() > 0, x.max() > 2) if x.mean() > 0 else (False,) for x in xs}
    assert paths == {(False,), (True, False), (True, True)}
    return xs


def _ort_optimized(model: bytes) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as d:
        so = session_options(1)
        so.optimized_model_filepath = os.path.join(d, "m.onnx")
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def _ops(model: onnx.ModelProto, op: str, domain: str = NCHWC) -> list:
    return [n for n in all_nodes(model.graph) if n.op_type == op and n.domain == domain]


def _arm_reorders(model: onnx.ModelProto) -> list:
    arms = [a.g for n in all_nodes(model.graph) if n.op_type == "If" for a in n.attribute]
    return [n for g in arms for n in g.node
            if n.domain == NCHWC and n.op_type in ("ReorderInput", "ReorderOutput")]


def test_blocked_values_cross_if_boundaries_and_outputs_do_not_change():
    model = _model()
    own = _ort_optimized(model)
    if not _ops(own, "Conv"):
        pytest.skip("ONNX Runtime uses no NCHWc convolutions on this CPU")
    _, relaid = blocked_across_branches(model, session_options(1))
    assert relaid is not None
    # ONNX Runtime reorders at every arm boundary; rewritten, nothing is reordered into
    # the blocked layout again, nor out of it inside an arm
    assert len(_ops(own, "ReorderInput")) >= 3 and len(_arm_reorders(own)) >= 4
    assert not _ops(relaid, "ReorderInput") and not _arm_reorders(relaid)
    # the residual Add + Relu became the second conv's fused sum and activation
    fused = [n for n in _ops(relaid, "Conv") if len(n.input) == 4]
    assert any(oh.get_attribute_value(a) == b"Relu" for n in fused for a in n.attribute
               if a.name == "activation"), fused
    # r0's channel means are pooled blocked, but adding them is a broadcast, not a
    # residual of the same shape: that Add stays
    assert any("g" in n.input for n in _ops(relaid, "Add", domain="")), "broadcast fused"
    # y's channel means (H, W dropped, C a multiple of the block) are y pooled blocked and
    # reshaped: blocked [1, C, 1, 1] is plain [1, C] already, nothing is reordered
    pooled, = [n for n in relaid.graph.node if "pooled" in n.output]
    assert pooled.op_type == "Reshape" and not _ops(relaid, "Flatten", domain="")
    plain = ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])
    session = new_session(model, 1)
    for x in _inputs():
        want, got = plain.run(None, {"x": x}), session.run(None, {"x": x})
        for w, g in zip(want, got):
            assert w.shape == g.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_the_rewrite_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("DYCOMP_NCHWC_ACROSS_BRANCHES", "0")
    assert blocked_across_branches(_model(), session_options(1))[1] is None


def test_gated_network_runs_blocked_across_its_gates_and_matches_eager():
    mod = ZOO["policy_net"]
    model, example = mod.make()
    cm = dycomp.compile(model, example, backend="onnx", check=False)
    (name, onnx_model), = cm.program.executor.models.items()
    _, relaid = blocked_across_branches(onnx_model, session_options(2))
    if relaid is None:
        pytest.skip("ONNX Runtime uses no NCHWc convolutions on this CPU")
    # no arm reorders its input again: every block reads the blocked value it is given
    arms = [a.g for n in relaid.graph.node if n.op_type == "If" for a in n.attribute]
    assert arms and not any(n.op_type == "ReorderInput" for g in arms for n in g.node)
    with torch.no_grad():
        for inp in mod.sample_inputs(30):
            want = model(*inp)[0]
            got = cm(*inp)[0]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_failing_rewrite_leaves_onnx_runtimes_own_graph(monkeypatch, caplog):
    def broken(optimized, shapes):
        raise ValueError("boom")

    monkeypatch.setattr(onnx_executor, "across_branches", broken)
    model = _model()
    session, relaid = blocked_across_branches(model, session_options(1))
    assert relaid is None and "boom" in caplog.text
    x = _inputs()[0]
    plain = ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])
    for w, g in zip(plain.run(None, {"x": x}), session.run(None, {"x": x})):
        np.testing.assert_array_equal(g, w)
