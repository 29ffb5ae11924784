"""Every zoo example compiles unchanged and matches eager PyTorch on every input and path."""

from __future__ import annotations

import pytest
import torch

import dycomp
from dycomp.check import compare
from examples.zoo import ZOO

BACKENDS = ["torch", "onnx", "tvm"]
N_INPUTS = 200
CASES = [(name, method) for name, mod in ZOO.items()
         for method in ["forward", *getattr(mod, "EXTRA_METHODS", {})]]


@pytest.fixture(scope="module")
def compiled():
    cache = {}

    def get(name, method, backend):
        key = (name, method, backend)
        if key not in cache:
            model, example = ZOO[name].make()
            cache[key] = (model, dycomp.compile(model, example, method=method, backend=backend))
        return cache[key]

    return get


def _path_key(mod, method):
    return getattr(mod, "EXTRA_METHODS", {}).get(method, mod.path_key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,method", CASES)
def test_zoo_matches_eager_on_every_path(name, method, backend, compiled):
    mod = ZOO[name]
    model, cm = compiled(name, method, backend)
    fn = getattr(model, method)
    key_fn = _path_key(mod, method)
    label_to_path: dict = {}
    for i, inputs in enumerate(mod.sample_inputs(N_INPUTS)):
        with torch.no_grad():
            expected = fn(*inputs)
        actual, path = cm.run(*inputs, return_path=True)
        diff = compare(expected, actual)
        assert diff is None, f"{name}.{method} input {i}: {diff}; compiled path {path}"
        label = key_fn(model, inputs, expected)
        # same eager path -> same compiled path (the compiled program took the same decisions)
        assert label_to_path.setdefault(label, path) == path, f"{name} input {i}: {label}"
    expected_paths = mod.PATHS if method == "forward" else None
    if isinstance(expected_paths, (set, frozenset)):
        assert set(label_to_path) == set(expected_paths), "path coverage"
    elif isinstance(expected_paths, int):
        assert len(label_to_path) >= expected_paths, "path coverage"


def test_static_resnet_is_one_region(compiled):
    _, cm = compiled("static_resnet", "forward", "torch")
    s = cm.graph.stats()
    assert (s["regions"], s["branches"], s["loops"]) == (1, 0, 0)


def test_gated54_is_linear_in_gates():
    model, example = ZOO["gated54"].make()
    s = dycomp.compile(model, example, optimize=False).graph.stats()  # as captured
    assert s["branches"] == 54
    assert s["regions"] <= 3 * 54


def test_gated_mul_gates_become_branches(compiled):
    """GateToBranch turns each of the 18 multiplicative gates into a branch."""
    _, cm = compiled("gated_mul", "forward", "torch")
    assert cm.graph.stats()["branches"] == 18
    assert sum(o.startswith("gate-to-branch") for o in cm.optimizations) == 18


def test_decoder_attention_projections_leave_the_loop(compiled):
    _, cm = compiled("decoder", "attend", "torch")
    assert sum(o.startswith("hoist-loop-invariants") for o in cm.optimizations) == 1


def test_gated_resnet_one_branch_per_block(compiled):
    _, cm = compiled("gated_resnet", "forward", "torch")
    assert cm.graph.stats()["branches"] == 18


@pytest.mark.parametrize("name,method", [("decoder", "forward"), ("decoder", "generate"),
                                         ("act", "forward")])
def test_loops_are_traced_once(name, method, compiled):
    _, cm = compiled(name, method, "torch")
    s = cm.graph.stats()
    assert s["loops"] == 1
    assert s["regions"] <= 5  # the body is one or two regions, not one per iteration


def test_multi_exit_regions_linear_in_exits(compiled):
    _, cm = compiled("multi_exit", "forward", "torch")
    s = cm.graph.stats()
    assert s["branches"] >= 4 and s["regions"] <= 2 * 5
