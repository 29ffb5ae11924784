"""Shared weight store: equal tensors and blocks of larger ones stored once (issue #26)."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from dycomp.runtime.errors import ArtifactError
from dycomp.runtime.shared_weights import WeightStore, inline, strip_all


def _model(*arrays) -> bytes:
    inits = [numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(arrays)]
    out = helper.make_tensor_value_info("w0", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([], "g", [], [out], initializer=inits)
    return helper.make_model(graph).SerializeToString()


def _arrays(model: bytes) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in onnx.load_from_string(model).graph.initializer]


def test_blocks_and_copies_stored_once():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8, 7, 7)).astype(np.float32)
    parts = [w[:4, :2].copy(), w[:, :, 2:5, 2:5].copy(), w.copy(), w[:8].copy()]
    other = rng.standard_normal((4, 2, 7, 7)).astype(np.float32)  # not a block of w
    models = [_model(*parts[:2]), _model(parts[2], other), _model(parts[3])]
    store = WeightStore()
    stripped = strip_all(models, store)
    assert store.tensors == 2 and store.blocks == 3 and store.references == 5
    assert len(store.to_bytes()) < w.nbytes + other.nbytes + 64
    weights = store.to_bytes()
    back = [_arrays(inline(m, weights, "test")) for m in stripped]
    for got, want in zip([a for b in back for a in b], [*parts[:2], parts[2], other, parts[3]]):
        np.testing.assert_array_equal(got, want)


def test_reference_outside_the_store_refused():
    w = np.ones((8, 8), np.float32)
    store = WeightStore()
    (model,) = strip_all([_model(w)], store)
    with pytest.raises(ArtifactError, match="lies outside weights.bin"):
        inline(model, store.to_bytes()[:-4], "net.dyc/subnets/0/r0.onnx")
