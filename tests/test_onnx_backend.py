"""ONNX backend: same paths as backend torch, unsupported-op reporting, export contract,
dynamic shapes, executor, torch-free import. Zoo-wide agreement with eager PyTorch on 200
inputs per example is in test_zoo.py (BACKENDS)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import fx, nn

import dycomp
from dycomp.backends import lower
from dycomp.backends.onnx_backend import export_region_model, export_regions
from dycomp.ir.dyngraph import Region
from dycomp.runtime.onnx_executor import OnnxExecutor
from examples.zoo import ZOO, decoder
from tests.helpers import assert_matches_eager, randn_inputs

HERE = Path(__file__).name


def _line_of(text: str) -> str:
    """`test_onnx_backend.py:N` of the first source line containing `text`."""
    lines = Path(__file__).read_text().splitlines()
    return f"{HERE}:{next(i for i, ln in enumerate(lines, 1) if text in ln)}"


# -- same decisions as the reference backend ------------------------------------------------
@pytest.mark.parametrize("name,method", [(n, m) for n, mod in ZOO.items()
                                         for m in ["forward", *getattr(mod, "EXTRA_METHODS", {})]])
def test_zoo_takes_the_same_paths_as_backend_torch(name, method):
    model, example = ZOO[name].make()
    ref = dycomp.compile(model, example, method=method, backend="torch", check=False)
    cm = dycomp.compile(model, example, method=method, backend="onnx", check=False,
                        fuse_branches=False)  # fused subgraphs hide the arms taken
    for i, inputs in enumerate(ZOO[name].sample_inputs(50, seed=1)):
        _, want = ref.run(*inputs, return_path=True)
        _, got = cm.run(*inputs, return_path=True)
        assert got == want, f"{name}.{method} input {i}"


# -- unsupported ops -------------------------------------------------------------------------
class TwoUnexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = torch.special.i0(self.fc(x))  # no ONNX export: aten::i0
        z = torch.lgamma(y.abs() + 1)  # no ONNX export: aten::lgamma
        if z.sum() > 0:
            return torch.relu(z)
        return -z


def test_every_unsupported_op_of_a_region_is_reported_at_once_with_its_line(capfd):
    with pytest.raises(dycomp.UnsupportedError) as info:
        dycomp.compile(TwoUnexportable(), torch.randn(1, 4), backend="onnx")
    err = info.value
    msg = str(err)
    i0, lgamma = _line_of("torch.special.i0(self.fc"), _line_of("torch.lgamma(y.abs()")
    assert "2 ops cannot be exported to ONNX" in msg
    assert f"{i0}: torch._C._special.special_i0" in msg and "aten::i0" in msg
    assert f"{lgamma}: torch.lgamma" in msg and "aten::lgamma" in msg
    assert err.where == i0 and "backend='torch'" in err.hint
    assert [(op[0], op[2]) for op in err.ops] == [("r0", i0), ("r0", lgamma)]
    assert capfd.readouterr().out == ""  # the exporter's IR dump stays off stdout


def test_export_keeps_module_training_flags():
    """torch.onnx.export(training=EVAL) ends with `train(orig)` on the exported module,
    which would flip every submodule of a region to the GraphModule's own flag."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).eval()
    graph = dycomp.compile(model, torch.randn(1, 3, 8, 8), backend="torch").graph
    for r in graph.regions.values():
        r.gm.train()
        r.gm.get_submodule("1").eval()

    def flags():
        return [(n, m.training) for r in graph.regions.values() for n, m in r.gm.named_modules()]

    before = flags()
    export_regions(graph)
    assert flags() == before and not any(m.training for m in model.modules())


# -- export contract -------------------------------------------------------------------------
class _Root(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.arange(3))


def _region(build, *examples) -> Region:
    """A Region from `build(graph, *placeholders) -> outputs`, typed by `examples`."""
    g = fx.Graph()
    phs = [g.placeholder(f"x{i}") for i in range(len(examples))]
    for p, ex in zip(phs, examples):
        p.meta.update(example=ex, dynamic=False)
    g.output(tuple(build(g, *phs)))
    return Region("r", fx.GraphModule(_Root(), g), [f"{HERE}:1"])


def _run(region: Region, *args):
    model = export_region_model(region)
    return model, OnnxExecutor({"r": model.SerializeToString()}, threads=1)("r", *args)


def test_identity_constant_and_typed_outputs():
    f = torch.randn(2, 3)
    _, out = _run(_region(lambda g, x: [x, x], f), f.numpy())
    assert all(np.array_equal(o, f.numpy()) for o in out)
    _, (table,) = _run(_region(lambda g: [g.get_attr("table")]))  # a region with no inputs
    assert table.dtype == np.int64 and table.tolist() == [0, 1, 2]

    def typed(g, x):
        return [g.call_method("gt", (g.call_method("sum", (x,)), 0)),
                g.call_method("argmax", (x,))]

    model, (flag, idx) = _run(_region(typed, f), f.numpy())
    assert flag.dtype == np.bool_ and flag.shape == () and bool(flag) == bool(f.sum() > 0)
    assert idx.dtype == np.int64 and idx.item() == int(f.argmax())
    assert [o.name for o in model.graph.output] == ["out0", "out1"]


def test_inputs_are_the_placeholders_in_order_even_when_unused():
    a, b, c = torch.randn(2), torch.randn(3), torch.tensor(2.0)
    model, (y,) = _run(_region(lambda g, x, y, z: [g.call_function(torch.mul, (y, z))], a, b, c),
                       a.numpy(), b.numpy(), 2.0)  # a Python float for the 0-d input
    assert [i.name for i in model.graph.input] == ["x0", "x1", "x2"]
    assert np.allclose(y, b.numpy() * 2)


# -- dynamic shapes --------------------------------------------------------------------------
@pytest.mark.parametrize("fuse", [False, True])
def test_generate_loop_grows_a_sequence_through_one_session(fuse):
    """On the host: the body's session takes the growing sequence (a symbolic dimension).
    Fused: the `while` test reads `seq.size(1)` and its `and` mixes a Python bool with a
    tensor, all inside one ONNX `Loop`."""
    model, example = decoder.make()
    cm = dycomp.compile(model, example, method="generate", backend="onnx", fuse_branches=fuse)
    dims = {r: [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
                for i in onnx.load_from_string(b).graph.input]
            for r, b in cm.program.executor.models.items()}
    if fuse:
        assert cm.graph.stats()["loops"] == 0 and cm.graph.stats()["region_calls"] == 1
    else:
        assert any(isinstance(d, str) for ins in dims.values() for shape in ins for d in shape)
    lengths = set()
    for (src,) in decoder.sample_inputs(40):
        with torch.no_grad():
            expected = model.generate(src)
        out = cm(src)
        assert torch.equal(out, expected)
        lengths.add(out.shape[1])
    assert len(lengths) >= 3  # the loop body ran on several sequence lengths


class Halting(nn.Module):
    """A loop-carried value that changes rank: `acc = 0.0`, then `acc + p` is [1, 1]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cell = nn.Linear(8, 8)

    def forward(self, x):
        acc, n = 0.0, 0
        while n < 6:
            x = torch.tanh(self.cell(x))
            acc = acc + x.abs().mean(1, keepdim=True)
            n += 1
            if acc.item() > 1.0:
                break
        return x * acc, n


@pytest.mark.parametrize("fuse", [False, True])
def test_loop_carried_value_that_changes_rank(fuse):
    inputs = randn_inputs((1, 8), 30)
    cm, paths = assert_matches_eager(Halting().eval(), inputs, backend="onnx", fuse_branches=fuse)
    rank_free = [i.name for b in cm.program.executor.models.values()
                 for i in onnx.load_from_string(b).graph.input
                 if not i.type.tensor_type.HasField("shape")]
    assert len({len(p) for p in paths}) >= 4  # the regions each iteration ran
    if not fuse:  # `acc` is 0.0 before the loop, a [1, 1] tensor after one iteration: the
        # first iteration is peeled, so the loop's regions take `acc` at one rank
        assert not rank_free
    else:  # one ONNX Loop whose carried `acc` starts as a 0-d float32
        assert cm.graph.stats()["loops"] == 0 and cm.graph.stats()["region_calls"] == 1


# -- executor --------------------------------------------------------------------------------
def test_threads_plan_reaches_the_executor():
    """Light subgraphs run on one thread; heavy ones (convolutions) get the budget. A
    small recurrent step is light (act: one 32-wide GRU cell in a `Loop`)."""
    m = TwoLayer().eval()
    xs = randn_inputs((1, 8), 8)
    for threads in (1, 3):
        cm, _ = assert_matches_eager(m, xs, backend="onnx", threads=threads)
        assert set(cm.program.executor.threads.values()) == {1}  # two small Linear layers
    model, example = ZOO["static_resnet"].make()
    graph = dycomp.compile(model, example, backend="torch").graph
    assert set(lower(graph, "onnx", threads=3).threads.values()) == {3}
    model, example = ZOO["act"].make()
    cm = dycomp.compile(model, example, backend="onnx", threads=3, check=False)
    assert "Loop" in {op for m in cm.graph.regions.values() for op in _op_types(m.onnx.graph)} \
        and set(cm.program.executor.threads.values()) == {1}
    with pytest.raises(ValueError, match="threads"):
        OnnxExecutor({"r": b""}, threads=0)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) if h.mean() > 0 else h


def test_executor_models_paths_arity_and_threads(tmp_path):
    m = TwoLayer().eval()
    graph = dycomp.compile(m, torch.randn(1, 8), backend="torch", optimize=False).graph
    models = export_regions(graph)
    assert set(models) == set(graph.regions) and all(isinstance(b, bytes) for b in models.values())
    (tmp_path / "r0.onnx").write_bytes(models["r0"])
    ex = OnnxExecutor({"r0": tmp_path / "r0.onnx"})
    x = np.random.default_rng(0).standard_normal((1, 8), dtype=np.float32)
    out = ex("r0", x)
    h = next(o for o in out if o.dtype == np.float32)
    assert sorted(str(o.dtype) for o in out) == ["bool", "float32"]
    assert np.allclose(h, m.a(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    with pytest.raises(TypeError, match="takes 1 inputs, got 2"):
        ex("r0", x, x)
    # inputs go to the session unconverted; what it refuses is converted and run again
    for other in (x.astype(np.float64), x.tolist(), x[:, ::-1][:, ::-1]):
        assert all(np.array_equal(a, b) for a, b in zip(ex("r0", other), out))
    with pytest.raises(Exception, match="(?i)dimensions|shape"):  # exact arrays: not retried
        ex("r0", np.zeros((1, 9), np.float32))
    results, errors = [], []

    def worker():
        try:
            results.extend(all(np.array_equal(a, b) for a, b in zip(ex("r0", x), out))
                           for _ in range(50))
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 200 and all(results)


def test_unloadable_model_is_an_artifact_error_naming_the_region():
    with pytest.raises(dycomp.ArtifactError, match=r"(?s)cannot load 1 subgraph.*bad: "):
        OnnxExecutor({"bad": b"not an onnx model"})


def test_onnx_executor_never_imports_torch(tmp_path):
    graph = dycomp.compile(TwoLayer().eval(), torch.randn(1, 8), backend="torch",
                           optimize=False).graph
    (tmp_path / "r0.onnx").write_bytes(export_regions(graph)["r0"])
    code = f'''
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np
from dycomp.runtime.onnx_executor import OnnxExecutor
ex = OnnxExecutor({{"r0": {str(tmp_path / "r0.onnx")!r}}}, threads=1)
out = ex("r0", np.ones((1, 8), np.float32))
assert sorted((str(o.dtype), o.shape) for o in out) == [("bool", ()), ("float32", (1, 8))], out
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def _op_types(graph):
    """The op types of `graph` and of the subgraphs of its `If` / `Loop` nodes (act's first
    iteration is peeled: its `Loop` sits in an `If` arm)."""
    for n in graph.node:
        yield n.op_type
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _op_types(a.g)
