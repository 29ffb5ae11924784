"""Variable input dimensions (`dynamic_dims=`): one compiled model for every size of a dim.

Each model is compiled once with a dim dynamic and run at sizes 1, 3 and 8 against eager
PyTorch; what cannot take other sizes faithfully is refused at compile time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import dycomp
import dycomp.runtime as rt
from dycomp.check import compare
from dycomp.errors import MismatchError, UnsupportedError
from dycomp.frontend.dyndims import parse_cli
from examples.zoo import ZOO

SIZES = (1, 3, 8)
PER_SIZE = 3  # seeded inputs per size
BATCH = {"x": {0: "batch"}}
# zoo models whose forward takes any batch in eager PyTorch (decisions over the batch)
BATCHED = ["multi_exit", "policy_net", "nested_if", "static_resnet", "gated_mul"]
# ... and those that decide on one sample's value (`if gate:`, `.item()`): eager answers
# only at batch 1, so a dynamic batch is refused at the line that reads it
BATCH_ONE = {"gated_resnet": "gated_resnet.py:", "moe": "moe.py:", "act": "act.py:",
             "gated54": "gated54.py:", "decoder": "decoder.py:"}


@pytest.fixture(scope="module")
def zoo_models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ZOO[name].make()
        return cache[name]
    return get


def _batches(name: str, size: int, seed: int) -> list[tuple]:
    """PER_SIZE inputs of `size` samples each, drawn from the zoo's sample inputs (so that
    the batch-wide decisions take several paths)."""
    samples = ZOO[name].sample_inputs(PER_SIZE * size, seed=seed)
    return [tuple(torch.cat(parts, 0) for parts in zip(*samples[i * size:(i + 1) * size]))
            for i in range(PER_SIZE)]


def _assert_matches(fn, cm, inputs: tuple, where: str) -> list:
    with torch.no_grad():
        expected = fn(*inputs)
    actual, path = cm.run(*inputs, return_path=True)
    diff = compare(expected, actual)
    assert diff is None, f"{where}: {diff}; compiled path {path}"
    return path


@pytest.mark.parametrize("name,backend", [(n, "onnx") for n in BATCHED] + [
    (n, "torch") for n in BATCHED if n != "gated_mul"])  # gated_mul: 18 blocks, slow eager
def test_zoo_dynamic_batch_matches_eager_at_1_3_8(name, backend, zoo_models):
    model, example = zoo_models(name)
    cm = dycomp.compile(model, example, backend=backend, dynamic_dims=BATCH,
                        check=backend == "onnx")  # the torch regions are the FX graphs
    assert "batch" in cm.signature
    paths = set()
    for size in SIZES:
        for i, inputs in enumerate(_batches(name, size, seed=size)):
            assert inputs[0].shape[0] == size
            paths.add(tuple(_assert_matches(model, cm, inputs, f"{name} batch {size} #{i}")))
    if name != "static_resnet":
        assert len(paths) > 1, "the inputs took one path only"


@pytest.mark.parametrize("name", sorted(BATCH_ONE))
def test_zoo_batch_one_decisions_refused(name, zoo_models):
    model, example = zoo_models(name)
    arg = "src" if name == "decoder" else "x"
    with pytest.raises(UnsupportedError, match="dynamic input dim") as e:
        dycomp.compile(model, example, backend="onnx", dynamic_dims={arg: {0: "batch"}})
    assert BATCH_ONE[name] in str(e.value)  # file:line of the read
    with torch.no_grad(), pytest.raises(RuntimeError):  # eager fails at batch 3 too
        model(*(torch.cat([x] * 3) for x in example))


@pytest.mark.parametrize("method", ["forward", "attend"])
def test_decoder_dynamic_source_length(method, zoo_models):
    """The GRU encoder and the attention over the source take any source length."""
    model, example = zoo_models("decoder")
    cm = dycomp.compile(model, example, backend="onnx", method=method,
                        dynamic_dims={"src": {1: "seq"}})
    assert cm.signature == "(src: float32[1, seq, 16])"
    g = torch.Generator().manual_seed(0)
    for length in SIZES:
        for i in range(PER_SIZE):
            src = torch.randn(1, length, 16, generator=g) * (0.5 + i)
            _assert_matches(getattr(model, method), cm, (src,), f"length {length} #{i}")


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_saved_artifact_takes_1_3_8_and_exports_symbolic_dims(tmp_path, zoo_models):
    model, example = zoo_models("multi_exit")
    cm = dycomp.compile(model, example, backend="onnx", dynamic_dims=BATCH)
    path = cm.save(tmp_path / "art")
    art = rt.load(path)
    assert str(art.signature) == "(x: float32[batch, 3, 32, 32])"
    assert art.manifest["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    loaded = dycomp.load(path)
    assert loaded.signature == cm.signature
    for size in SIZES:
        for inputs in _batches("multi_exit", size, seed=10 + size):
            with torch.no_grad():
                expected = model(*inputs)
            assert compare(expected, loaded(*inputs)) is None
            out = art(inputs[0].numpy())
            np.testing.assert_allclose(out[0], expected[0].numpy(), atol=1e-4, rtol=1e-4)
    fused = logits = 0
    for name, sub in art.subgraphs.items():
        m = onnx.load_from_string(art.files[sub["file"]])
        fused += sum(n.op_type == "If" for n in m.graph.node)
        for value in m.graph.input:
            if value.name == "x":  # the batch is a symbolic dim, the rest fixed
                assert _dims(value) == [_dims(value)[0], 3, 32, 32]
                assert isinstance(_dims(value)[0], str) and _dims(value)[0]
        for value in m.graph.output:  # logits: [batch, 10], the batch symbolic
            if len(_dims(value)) == 2:
                logits += 1
                assert isinstance(_dims(value)[0], str) and _dims(value)[1] == 10, (
                    name, _dims(value))
    assert fused >= 1 and logits >= 1  # the exits' branches fused into If nodes


class ShapeArithmetic(nn.Module):
    """Reads the batch size as a Python int: arithmetic, range, a decision, len()."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        n = x.shape[0]
        y = self.fc(x).reshape(n * 2, -1)
        z = torch.arange(n).float()[:, None] + y.view(n, -1)[:, :4]
        if n > 2:
            z = z * 2
        rows = []
        for i in range(x.size(0)):
            rows.append(z[i].sum())
        return torch.stack(rows) + len(x), x.new_zeros(n, 3), x.expand(n, 8).view(1, -1)


class SliceBySize(nn.Module):
    def forward(self, x):
        n = x.shape[0]
        return x.reshape(n * 2, -1)[:n]


class FirstTwo(nn.Module):
    """`x[:2]` has 2 rows at the example's batch 3 and at 4: its size looks fixed."""

    def forward(self, x):
        y = x[:2]
        return y.view(y.size(0), -1) * 2


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_python_reads_of_the_size_stay_symbolic(backend):
    torch.manual_seed(0)
    model = ShapeArithmetic()
    cm = dycomp.compile(model, torch.randn(3, 8), backend=backend, dynamic_dims=BATCH)
    g = torch.Generator().manual_seed(1)
    for size in (1, 2, 3, 8):
        for i in range(PER_SIZE):
            _assert_matches(model, cm, (torch.randn(size, 8, generator=g),), f"{size} #{i}")


def test_size_baked_by_the_example_is_caught():
    with pytest.raises(UnsupportedError, match="dynamic input dim"):
        dycomp.compile(SliceBySize(), torch.randn(3, 8), dynamic_dims=BATCH)
    # the self-check at other sizes (1 and 5) finds what propagation missed
    with pytest.raises(MismatchError, match="batch=1"):
        dycomp.compile(FirstTwo(), torch.randn(3, 4), dynamic_dims=BATCH)


class RareFirstTwo(nn.Module):
    """FirstTwo in an arm random inputs never take: only forcing it checks it."""

    def forward(self, x):
        if x.abs().max() > 1e3:
            y = x[:2]
            return y.view(y.size(0), -1) * 2
        return x * 3


def test_size_baked_in_a_rare_arm_is_caught_by_forcing_it_at_other_sizes():
    x = torch.randn(3, 4)
    cm = dycomp.compile(RareFirstTwo(), x, dynamic_dims=BATCH, check=False)
    assert torch.equal(cm(x), x * 3)  # the random arm is right: forcing is what finds it
    with pytest.raises(MismatchError, match="batch=1"):
        dycomp.compile(RareFirstTwo(), x, dynamic_dims=BATCH)


class Pair(nn.Module):
    def forward(self, x, y):
        return x * 2 + y, x.sum(1)


def test_call_time_checks_name_the_signature(tmp_path):
    cm = dycomp.compile(Pair(), (torch.randn(2, 4), torch.randn(2, 4)), backend="onnx",
                        dynamic_dims={"x": {0: "n"}, "y": {0: "n"}})
    sig = "(x: float32[n, 4], y: float32[n, 4])"
    assert cm.signature == sig and sig in repr(cm)
    art = rt.load(cm.save(tmp_path / "pair"))
    for call in (cm, lambda *a: art(*(t.numpy() for t in a))):
        assert call(torch.ones(5, 4), torch.ones(5, 4))[1].shape[0] == 5
        with pytest.raises(ValueError, match=r"dynamic dim 'n' is 3 on x dim 0 but 2 on y dim 0"):
            call(torch.ones(3, 4), torch.ones(2, 4))
        with pytest.raises(ValueError, match=r"float32\[n, 4\]"):
            call(torch.ones(3, 5), torch.ones(3, 5))  # a fixed dim differs
        with pytest.raises(ValueError, match=r"float32\[n, 4\]"):
            call(torch.ones(3, 4, 1), torch.ones(3, 4))  # another rank


def test_fixed_model_manifest_and_fast_path_unchanged(tmp_path):
    cm = dycomp.compile(Pair(), (torch.randn(2, 4), torch.randn(2, 4)), backend="onnx")
    art = rt.load(cm.save(tmp_path / "fixed"))
    assert [i["shape"] for i in art.manifest["inputs"]] == [[2, 4], [2, 4]]
    assert not art.signature.dynamic
    a = np.ones((2, 4), np.float32)
    assert rt.artifact.exact_inputs(art.signature, (a, a))


@pytest.mark.parametrize("dims,match", [
    ({"z": {0: "b"}}, "does not take"),
    ({"x": {2: "b"}}, "out of range"),
    ({"x": {0: "1b"}}, "not an identifier"),
    ({"x": {0: "b"}, "y": {1: "b"}}, "one name means one size"),
    ({"k": {0: "b"}}, "not a tensor"),
])
def test_dynamic_dims_validated(dims, match):
    class WithScale(nn.Module):
        def forward(self, x, y, k=2):
            return x * k + y

    with pytest.raises(UnsupportedError, match=match):
        dycomp.compile(WithScale(), (torch.randn(2, 4), torch.randn(2, 3)),
                       example_kwargs={"k": 2}, dynamic_dims=dims)


def test_cli_dynamic_flag(tmp_path, capsys):
    from dycomp.cli import main

    assert parse_cli(["x:0=batch", "x:-1=seq", "y:0=batch"]) == {
        "x": {0: "batch", -1: "seq"}, "y": {0: "batch"}}
    target = f"{Path(__file__).parent / 'cli_models.py'}:make"
    assert main(["compile", target, "--dynamic", "x=batch"]) == 2
    out = tmp_path / "gate"
    assert main(["compile", target, "--dynamic", "x:0=batch", "-o", str(out)]) == 0
    art = rt.load(out)
    assert art.signature.inputs[0].shape == ("batch", 4)
    assert art(np.ones((5, 4), np.float32))[0].shape[0] == 5
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    assert "x: float32[batch, 4]" in capsys.readouterr().out


class TinyGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.flat = nn.Linear(4, 8), nn.Linear(8, 3), False

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.mean() > 0.3:  # one decision for the whole batch
            h = h * 2
        return self.b(h).view(x.size(0), -1) if self.flat else self.b(h)


@pytest.mark.parametrize("flat", [False, True])
def test_tvm_symbolic_batch_or_fallback_with_reason(flat):
    """TVM imports the symbolic batch (untuned build); a region it cannot import (a
    `Reshape` to a shape read at run time) runs on ONNX Runtime, the reason recorded."""
    torch.manual_seed(0)
    model = TinyGate()
    model.flat = flat
    cm = dycomp.compile(model, torch.randn(2, 4), backend="tvm", dynamic_dims=BATCH)
    placement, fallback = cm.executor.placement, cm.executor.report.fallback
    if flat:
        assert "onnx" in placement.values()
        assert any("Reshape" in why for why in fallback.values())
    else:
        assert set(placement.values()) == {"tvm"} and not fallback
    g = torch.Generator().manual_seed(2)
    for size in SIZES:
        for i in range(PER_SIZE):
            _assert_matches(model, cm, (torch.randn(size, 4, generator=g) * (1 + i),),
                            f"tvm batch {size} #{i}")
