"""Constructs of the corpus transformers (PABEE, DynamicViT, nn.TransformerEncoder):
differential tests against eager on every path, backends torch and onnx."""

from __future__ import annotations

import pytest
import torch

import dycomp
from dycomp.check import compare
from tests.transformer_models import (
    GatedEncoder,
    Patience,
    Recurrent,
    SharedGroups,
    TokenPruning,
)

BACKENDS = ["torch", "onnx"]


def _inputs(shape, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _differential(model, inputs, backend, path_of=None):
    """Compile, then compare with eager on every input; returns the eager paths seen."""
    cm = dycomp.compile(model, (inputs[0],), backend=backend)
    paths = set()
    for x in inputs:
        with torch.no_grad():
            expected = model(x)
        if path_of is not None:
            paths.add(path_of(model, expected))
        diff = compare(expected, cm(x))
        assert diff is None, diff
    return cm, paths


@pytest.mark.parametrize("backend", BACKENDS)
def test_patience_loop_unrolled(backend):
    """PABEE: layer[i] and head_mask[i] of [None] * n in a range loop with a `break`."""
    torch.manual_seed(0)
    m = Patience().eval()

    ran = []
    cm = dycomp.compile(m, (torch.randn(1, 8),), backend=backend)
    for x in _inputs((1, 8), 40):
        before = m.layers_run
        with torch.no_grad():
            expected = m(x)
        ran.append(m.layers_run - before)
        assert compare(expected, cm(x)) is None
    assert set(ran) == {2, 3, 4}  # every exit but the first layer's (patience 1)


def test_patience_unrolled_structure():
    """Unrolled: no host loop and no switch among the four layers."""
    torch.manual_seed(0)
    cm = dycomp.compile(Patience().eval(), (torch.randn(1, 8),), backend="torch")
    s = cm.graph.stats()
    assert s["loops"] == 0 and s["regions"] == 3  # layers 1+2, 3, 4 (exits after 2, 3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_layer_sliced_mask(backend):
    """ALBERT: a list sliced by int(i / k) of the loop counter."""
    torch.manual_seed(1)
    exits = []
    m = SharedGroups().eval()
    cm, _ = _differential(m, _inputs((1, 8), 30, seed=1), backend)
    if backend == "torch":
        assert cm.graph.stats()["loops"] == 0
    for x in _inputs((1, 8), 30, seed=1):
        h, result = x, None
        for i in range(m.n):
            h = m.shared(h)
            logits = m.heads[i](h)
            if result is not None and bool((logits.argmax(1) == result.argmax(1)).all()):
                break
            result = logits
        exits.append(i)
    assert len(set(exits)) >= 2


def test_recurrent_loop_stays_a_loop():
    """Same weights every iteration: still one host loop, not 20 unrolled copies."""
    torch.manual_seed(2)
    m = Recurrent().eval()
    cm, _ = _differential(m, _inputs((1, 8), 20, seed=2), "torch")
    assert cm.graph.stats()["loops"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformer_encoder_fast_path(backend):
    """nn.TransformerEncoder in eval (PyTorch's fused fast path) around a branch."""
    torch.manual_seed(3)
    m = GatedEncoder().eval()
    inputs = _inputs((1, 5, 16), 20, seed=3)
    _differential(m, inputs, backend)
    with torch.no_grad():
        taken = {bool(m.encoder(x)[0, 0, 0] > 0) for x in inputs}
    assert taken == {False, True}


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_pruning(backend):
    """DynamicViT: argsort top-k token selection; the kept sets differ between inputs."""
    torch.manual_seed(4)
    m = TokenPruning().eval()
    inputs = _inputs((1, 17, 8), 20, seed=4)
    _differential(m, inputs, backend)
    with torch.no_grad():
        kept = {tuple(torch.argsort(m.score[0](x[:, 1:])[0, :, 0], descending=True)[:8]
                      .tolist()) for x in inputs}
    assert len(kept) == len(inputs)
