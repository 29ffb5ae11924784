"""Deployable artifacts: save, verify, load (numpy runtime and torch API), run without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
from dycomp import runtime as rt
from dycomp.check import compare
from examples.zoo import ZOO

N_INPUTS = 30


def _compile(name: str, method: str | None = None, **options):
    ex = ZOO[name]
    model, example = ex.make(0)
    cm = dycomp.compile(model, example, method=method or ex.METHOD, backend="onnx", check=False,
                        **options)
    return model, cm


@pytest.fixture(scope="module")
def multi_exit(tmp_path_factory):
    """(eager model, in-process compiled model, saved artifact directory). Unfused, so the
    artifact has several subgraphs and host decisions to check and tamper with."""
    model, cm = _compile("multi_exit", fuse_branches=False)
    path = cm.save(tmp_path_factory.mktemp("art") / "multi_exit.dyc")
    return model, cm, path


@pytest.fixture
def art_copy(multi_exit, tmp_path):
    """A private copy of the saved artifact, free to tamper with."""
    return Path(shutil.copytree(multi_exit[2], tmp_path / "copy.dyc"))


def _inputs(name: str, n: int = N_INPUTS) -> list[torch.Tensor]:
    return [inp[0] for inp in ZOO[name].sample_inputs(n, seed=7)]


# -- layout ----------------------------------------------------------------------------------
def test_layout_and_manifest(multi_exit):
    _, cm, path = multi_exit
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    regions = sorted(cm.graph.regions)
    assert files == sorted(["manifest.json", "host.py"] +
                           [f"subgraphs/{r}.onnx" for r in regions])  # no rows variants
    m = json.loads((path / "manifest.json").read_text())
    assert (m["format"], m["format_version"], m["backend"]) == ("dycomp-artifact", 3, "onnx")
    assert set(m["versions"]) == {"dycomp", "onnx", "onnxruntime", "torch", "python"}
    assert m["method"] == "forward" and m["source"].startswith("multi_exit.py:")
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 3, 32, 32]}]
    assert sorted(m["subgraphs"]) == regions and m["stats"] == cm.graph.stats()
    assert {"file", "inputs", "outputs", "lines", "ops", "params"} <= set(m["subgraphs"]["r0"])
    assert {"name", "dtype", "shape", "dynamic"} <= set(m["subgraphs"]["r0"]["inputs"][0])
    assert len(m["cfg"]["nodes"]) == cm.graph.cfg().number_of_nodes()
    assert set(m["files"]) == set(files) - {"manifest.json"}
    assert (path / "host.py").read_text() == cm.host_source


def test_no_pickle_anywhere(multi_exit):
    for p in multi_exit[2].rglob("*"):
        assert p.suffix not in (".pkl", ".pickle", ".pt", ".pth"), p
        if p.is_file():
            assert not p.read_bytes().startswith(b"\x80"), f"{p} looks like a pickle"


# -- numpy runtime ---------------------------------------------------------------------------
def test_runtime_matches_eager_and_compiled_paths(multi_exit):
    model, cm, path = multi_exit
    art = rt.load(path)
    assert str(art.signature) == "(x: float32[1, 3, 32, 32])"
    exits = set()
    for i, x in enumerate(_inputs("multi_exit")):
        with torch.no_grad():
            logits, exit_id, confident = model(x)
        out, p = art(x.numpy(), return_path=True)
        np.testing.assert_allclose(out[0], logits.numpy(), atol=1e-4, rtol=1e-4,
                                   err_msg=f"input {i}")
        assert (out[1], out[2]) == (exit_id, confident), f"input {i}"
        assert p == cm.run(x, return_path=True)[1], f"input {i}"
        exits.add(exit_id)
    assert len(exits) >= 3, exits


@pytest.mark.parametrize("method", ["forward", "generate"])
def test_runtime_decoder_loops(tmp_path, method):
    model, cm = _compile("decoder", method)
    art = rt.load(cm.save(tmp_path / "dec.dyc"))
    lengths = set()
    for i, src in enumerate(_inputs("decoder")):
        with torch.no_grad():
            expected = getattr(model, method)(src)
        out = art(src.numpy())
        if method == "forward":
            assert list(out[0]) == expected[0], f"input {i}"
            np.testing.assert_allclose(out[1], expected[1].numpy(), atol=1e-4, rtol=1e-4)
            lengths.add(len(expected[0]))
        else:
            np.testing.assert_array_equal(out, expected.numpy(), err_msg=f"input {i}")
            lengths.add(expected.shape[1])
    assert len(lengths) >= 3, lengths


def test_runtime_is_thread_safe(multi_exit):
    _, _, path = multi_exit
    art = rt.load(path)
    xs = [x.numpy() for x in _inputs("multi_exit", 8)]
    expected = [art(x) for x in xs]
    errors = []

    def work():
        for x, e in zip(xs, expected):
            out = art(x)
            if not (np.array_equal(out[0], e[0]) and out[1:] == e[1:]):
                errors.append((out, e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("bad, what", [
    ((np.zeros((1, 3, 32, 31), np.float32),), "shape"),
    ((np.zeros((1, 3, 32, 32), np.float64),), "dtype"),
    ((), "got 0 inputs"),
    ((np.zeros((1, 3, 32, 32), np.float32),) * 2, "got 2 inputs"),
    (("not an array",), "not a numeric array"),
])
def test_wrong_inputs_name_the_signature(multi_exit, bad, what):
    art = rt.load(multi_exit[2])
    with pytest.raises(ValueError, match=r"expected \(x: float32\[1, 3, 32, 32\]\)") as e:
        art(*bad)
    assert what in str(e.value)


def test_python_lists_convert_only_exactly():
    sig = rt.Signature((rt.TensorSpec("t", np.dtype("int64"), (2,)),
                        rt.TensorSpec("f", np.dtype("float32"), ())))
    t, f = rt.artifact.check_inputs(sig, ([1, 2], 0.5))
    assert t.dtype == np.int64 and f.dtype == np.float32 and f == 0.5
    with pytest.raises(ValueError, match="does not convert exactly to int64"):
        rt.artifact.check_inputs(sig, ([1.5, 2], 0.5))


def test_onnx_only_regions_are_saved(tmp_path):
    """Regions a fusing pass left as ONNX models only (gm None) describe themselves."""
    import onnx

    from dycomp.ir.dyngraph import Region

    model, cm = _compile("decoder", "generate", fuse_branches=False)  # regions that grow
    for name, proto in cm.executor.models.items():
        old = cm.graph.regions[name]
        cm.graph.regions[name] = Region(name, None, old.lines, onnx=onnx.load_from_string(proto))
    art = rt.load(cm.save(tmp_path / "fused.dyc"))
    dynamic = [v for sub in art.subgraphs.values() for v in sub["inputs"] if v["dynamic"]]
    assert dynamic and all(not isinstance(v["shape"][1], int) for v in dynamic), dynamic
    assert "int64" in {v["dtype"] for v in dynamic}  # the growing token sequence
    src = _inputs("decoder", 1)[0]
    with torch.no_grad():
        np.testing.assert_array_equal(art(src.numpy()), model.generate(src).numpy())


# -- fused subgraphs report the regions they ran ---------------------------------------------
@pytest.fixture(scope="module")
def fused_exits(tmp_path_factory):
    """multi_exit fused into one subgraph (exits as nested `If` nodes), and unfused."""
    model, fused = _compile("multi_exit")
    _, host = _compile("multi_exit", fuse_branches=False)
    return fused, host, fused.save(tmp_path_factory.mktemp("art") / "fused.dyc")


def test_fused_subgraph_reports_the_regions_it_ran(fused_exits):
    """The saved subgraph is the traced one (its last output lists the regions it ran);
    loaded, it reports the host program's path, exit by exit, and runs without it."""
    import onnx

    fused, host, path = fused_exits
    art = rt.load(path)
    ((name, sub),) = art.subgraphs.items()
    saved = onnx.load_from_string((path / sub["file"]).read_bytes())
    assert saved.graph.output[-1].name == "dycomp_path" and sub["ran"][0] == "r0"
    assert len(art.program.executor.sessions[name].get_outputs()) == len(saved.graph.output) - 1
    paths = set()
    for x in _inputs("multi_exit"):
        out, p = art(x.numpy(), return_path=True)
        assert p == fused.run(x, return_path=True)[1] == host.run(x, return_path=True)[1]
        np.testing.assert_array_equal(out[0], art(x.numpy())[0])
        paths.add(p)
    assert len(paths) >= 3, paths


def test_malformed_region_list_is_an_artifact_error(fused_exits, tmp_path):
    copy = Path(shutil.copytree(fused_exits[2], tmp_path / "copy.dyc"))
    m = json.loads((copy / "manifest.json").read_text())
    next(iter(m["subgraphs"].values()))["ran"] = "r0"
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(dycomp.ArtifactError, match="'ran' must be a list of region names"):
        rt.load(copy)


# -- torch API -------------------------------------------------------------------------------
def test_dycomp_load_roundtrip_torch(multi_exit, tmp_path):
    model, cm, path = multi_exit
    cm2 = dycomp.load(path)
    assert cm2.graph is None and cm2.backend == "onnx"
    for i, x in enumerate(_inputs("multi_exit", 10)):
        with torch.no_grad():
            expected = model(x)
        actual, p = cm2.run(x, return_path=True)
        assert compare(expected, actual) is None, f"input {i}: {compare(expected, actual)}"
        assert p == cm.run(x, return_path=True)[1]
    assert cm2.subgraphs.keys() == cm.subgraphs.keys()
    assert cm2.subgraphs["r0"]["inputs"] == cm.subgraphs["r0"]["inputs"]
    assert "host program" in cm2.explain() and "r0" in cm2.explain()
    again = rt.load(cm2.save(tmp_path / "again.dyc"))  # a loaded model saves as it was
    assert again.manifest == rt.load(path).manifest


class DictNet(nn.Module):
    """Nested inputs, a keyword argument and a baked Python value; dict output."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, inputs: dict, scale: float = 2.0, *, mode: str = "gate"):
        x = inputs["x"] * scale + inputs["bias"][0]
        if x.sum() > 0:
            return {"y": self.a(x), "mode": mode}
        return {"y": self.b(x), "mode": mode}


def test_dycomp_load_keeps_structure_and_kwargs(tmp_path):
    torch.manual_seed(0)
    model = DictNet().eval()
    example = ({"x": torch.randn(1, 4), "bias": [torch.randn(4)]}, 3.0)
    cm = dycomp.compile(model, example, example_kwargs={"mode": "m"}, backend="onnx")
    cm2 = dycomp.load(cm.save(tmp_path / "dict.dyc"))
    m = json.loads((tmp_path / "dict.dyc" / "manifest.json").read_text())
    assert {"name": "scale", "static": 3.0} in m["inputs"]
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        inp = {"x": torch.randn(1, 4, generator=g), "bias": [torch.randn(4, generator=g)]}
        with torch.no_grad():
            expected = model(inp, 3.0, mode="m")
        assert compare(expected, cm2(inp, 3.0, mode="m")) is None
    with pytest.raises(ValueError, match="differs from the value"):
        cm2(inp, 4.0, mode="m")


# -- saving errors ---------------------------------------------------------------------------
def test_only_onnx_can_be_saved(tmp_path):
    model, example = ZOO["nested_if"].make(0)
    cm = dycomp.compile(model, example, backend="torch", check=False)
    with pytest.raises(dycomp.UnsupportedError, match="backend='onnx'"):
        cm.save(tmp_path / "t.dyc")
    assert not (tmp_path / "t.dyc").exists()


def test_unserializable_baked_value_is_a_clear_error(tmp_path):
    class Net(nn.Module):
        def forward(self, x, dtype):
            return x.to(dtype) * 2

    cm = dycomp.compile(Net(), (torch.randn(2), torch.float64), backend="onnx", check=False)
    with pytest.raises(dycomp.UnsupportedError, match="dtype=torch.float64"):
        cm.save(tmp_path / "n.dyc")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_other_directories(multi_exit, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(dycomp.ArtifactError, match="not a dycomp artifact"):
        multi_exit[1].save(other)
    assert (other / "notes.txt").read_text() == "precious"


def test_overwrites_an_artifact_and_cleans_up_on_failure(multi_exit, art_copy, monkeypatch):
    from dycomp import artifact

    (art_copy / "host.py").write_text("stale")
    multi_exit[1].save(art_copy)
    rt.load(art_copy)

    def fail(tmp, manifest, files):
        tmp.mkdir()
        (tmp / "host.py").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "_write_files", fail)
    with pytest.raises(OSError, match="disk full"):
        multi_exit[1].save(art_copy)
    assert sorted(p.name for p in art_copy.parent.iterdir()) == ["copy.dyc"]
    rt.load(art_copy)


# -- tampering -------------------------------------------------------------------------------
def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_manifest(path: Path, **fields) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(fields)
    (path / "manifest.json").write_text(json.dumps(m))


TAMPER = {
    "modified subgraph": (lambda p: _flip_byte(p / "subgraphs/r3.onnx"), "r3.onnx: sha256"),
    "truncated subgraph": (lambda p: (p / "subgraphs/r0.onnx").write_bytes(
        (p / "subgraphs/r0.onnx").read_bytes()[:100]), "r0.onnx: sha256"),
    "deleted subgraph": (lambda p: (p / "subgraphs/r6.onnx").unlink(), "r6.onnx: file is missing"),
    "modified host": (lambda p: (p / "host.py").write_text(
        (p / "host.py").read_text().replace("bool(", "not bool(", 1)), "host.py: sha256"),
    "unknown version": (lambda p: _set_manifest(p, format_version=4),
                        "unsupported format_version 4; this dycomp reads format_version 3"),
    "garbage manifest": (lambda p: (p / "manifest.json").write_bytes(b"\x00{garbage"),
                         "not valid JSON"),
    "deleted manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    "wrong format": (lambda p: _set_manifest(p, format="something-else"), "not a dycomp"),
    "escaping path": (lambda p: _set_manifest(p, files={"../x": "0"}), "leaves the artifact"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_raises_artifact_error(art_copy, case):
    tamper, message = TAMPER[case]
    tamper(art_copy)
    with pytest.raises(dycomp.ArtifactError) as e:
        rt.load(art_copy)
    assert message in str(e.value)
    with pytest.raises(dycomp.ArtifactError):
        dycomp.load(art_copy)


# -- deployment without torch ----------------------------------------------------------------
NO_TORCH = r"""
import json, sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np
from dycomp import runtime as rt
art = rt.load(sys.argv[1])
res = []
for x in np.load(sys.argv[2]):
    out, path = art(x, return_path=True)
    res.append({"logits": out[0].tolist(), "exit": int(out[1]), "path": list(path)})
assert not [m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None]
print(json.dumps(res))
"""


@pytest.mark.parametrize("fused", [False, True])
def test_artifact_runs_without_torch(multi_exit, fused_exits, tmp_path, fused):
    """Unfused, and fused (the traced subgraph is loaded, and cut down, without torch)."""
    model, cm, path = multi_exit
    if fused:
        cm, _, path = fused_exits
    xs = torch.cat(_inputs("multi_exit", 10))[:, None]
    np.save(tmp_path / "xs.npy", xs.numpy())
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(path), str(tmp_path / "xs.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for x, got in zip(xs, res):
        with torch.no_grad():
            logits, exit_id, _ = model(x)
        np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-4, rtol=1e-4)
        assert got["exit"] == exit_id
        assert tuple(got["path"]) == cm.run(x, return_path=True)[1]
