"""Boolean `Where`, which ONNX Runtime's CPU kernel lacks, runs as a `Where` on uint8
(`dycomp/backends/onnx_where.py`): from user code and from a speculated branch."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from torch import nn

from dycomp.backends.onnx_where import bool_wheres
from dycomp.runtime.onnx_executor import cpu_session, session_options
from tests.helpers import assert_matches_eager, randn_inputs


class MaskSelect(nn.Module):
    """`torch.where` between two masks, and a decision on the result."""

    def forward(self, x):
        m = torch.where(x[:, :4] > 0, x[:, 4:] > 1.5, x[:, 4:] < -1.5)
        if m.any():
            return x * 2.0, m
        return x - 1.0, m


class SpeculatedFlag(nn.Module):
    """Cheap arms that both assign a boolean tensor: speculated and selected."""

    def forward(self, x):
        y = torch.tanh(x)
        if y[0, 5] > 0.1:
            flag = y > 0.2
        else:
            flag = y < -0.2
        return flag, y


def test_user_where_on_masks_matches_eager():
    xs = randn_inputs((1, 8), 20, seed=1)
    assert {bool(MaskSelect()(x)[1].any()) for x in xs} == {True, False}  # both arms
    assert_matches_eager(MaskSelect(), xs, backend="onnx")


def test_speculated_boolean_arms_match_eager():
    xs = randn_inputs((1, 8), 20, seed=2)
    assert_matches_eager(SpeculatedFlag(), xs, backend="onnx")


def _where_model(shapes) -> onnx.ModelProto:
    names = ["c", "a", "b"]
    g = helper.make_graph(
        [helper.make_node("Where", names, ["y"], "w")], "g",
        [helper.make_tensor_value_info(n, TensorProto.BOOL, s) for n, s in zip(names, shapes)],
        [helper.make_tensor_value_info("y", TensorProto.BOOL, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


_SHAPES = st.sampled_from([([3], [3], [3]), ([2, 3], [3], [1]), ([1], [2, 1], [1, 4]),
                           ([], [5], [5])])


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(shapes=_SHAPES, seed=st.integers(0, 2**16))
def test_rewritten_where_is_numpy_where(shapes, seed):
    """After the rewrite ONNX Runtime loads the model and computes `np.where` exactly,
    broadcasting included."""
    model = _where_model(shapes)
    assert bool_wheres(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Cast", "Cast", "Where", "Cast"]
    rng = np.random.default_rng(seed)
    feed = {n: np.asarray(rng.random(s) > 0.5) for n, s in zip("cab", shapes)}
    (got,) = cpu_session(model.SerializeToString(), session_options(1)).run(None, feed)
    want = np.where(feed["c"], feed["a"], feed["b"])
    assert got.dtype == np.bool_ and np.array_equal(got, want)


def test_float_where_is_left_alone():
    g = helper.make_graph(
        [helper.make_node("Where", ["c", "a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [2]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert bool_wheres(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Where"]
