"""The runtime installs alone: the `dycomp-runtime` wheel, in a fresh virtual environment
without PyTorch, TVM or scikit-learn, loads and runs artifacts saved by the compiler.

The venv gets the wheel plus numpy, onnx and onnxruntime at this environment's versions
from the package index (or pip's local wheels). Set DYCOMP_OFFLINE=1 to skip it where no
index can be reached; an unreachable index also skips, with pip's reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dycomp

ROOT = Path(__file__).resolve().parents[1]
DEPS = ("numpy", "onnx", "onnxruntime")
ABSENT = ("torch", "tvm", "sklearn", "cryptography")
UNREACHABLE = ("No matching distribution", "Could not find a version", "NewConnectionError",
               "Max retries exceeded", "Temporary failure in name resolution")


class Gate(nn.Module):
    """One data-dependent branch between two heads."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.mean() > 0.2:
            return self.b(h)
        return self.c(h) * 2.0


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def build_runtime_wheel(out: Path) -> Path:
    """The runtime's wheel, built from a copy of `runtime/` (no build files left there)."""
    src = out / "src"
    shutil.copytree(ROOT / "runtime", src,
                    ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "-w", out / "dist", src])
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (out / "dist").glob("dycomp_runtime-*.whl")
    return wheel


def make_runtime_venv(where: Path) -> Path:
    """A fresh venv holding the runtime wheel and its three dependencies; its python."""
    wheel = build_runtime_wheel(where)
    venv.create(where / "venv", with_pip=True)
    python = where / "venv" / "bin" / "python"
    pins = [f"{d}=={metadata.version(d)}" for d in DEPS]
    r = _run([python, "-m", "pip", "install", "-q", wheel, *pins])
    if r.returncode != 0:
        if any(s in r.stderr for s in UNREACHABLE):
            pytest.skip(f"no package index for {pins}: {r.stderr.strip().splitlines()[-1]}")
        raise AssertionError(r.stdout + r.stderr)
    return python


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory) -> Path:
    if os.environ.get("DYCOMP_OFFLINE"):
        pytest.skip("DYCOMP_OFFLINE is set: a fresh venv needs a package index")
    return make_runtime_venv(tmp_path_factory.mktemp("runtime_alone"))


SCRIPT = """
import importlib.util, json, sys
import numpy as np
import dycomp, dycomp.runtime as rt
art, xs, out = sys.argv[1:]
m = rt.load(art)
np.save(out, np.stack([m.run(x) for x in np.load(xs)]))
print(json.dumps({"runtime": rt.__file__, "dycomp": getattr(dycomp, "__file__", None),
                  "found": [n for n in %r if importlib.util.find_spec(n)]}))
""" % (ABSENT,)


def _inputs(n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(-2.0, 2.0, n).reshape(n, 1, 1)
    return torch.randn(n, 1, 8, generator=g) * scale


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "host"])
def test_saved_artifact_runs_in_runtime_only_venv(runtime_python, tmp_path, fuse):
    torch.manual_seed(0)
    model = Gate().eval()
    xs = _inputs()
    cm = dycomp.compile(model, (xs[0],), backend="onnx", fuse_branches=fuse)
    art = cm.save(tmp_path / "gate.dyc")
    with torch.no_grad():
        took = [bool(torch.relu(model.a(x)).mean() > 0.2) for x in xs]
        expected = np.stack([model(x).numpy() for x in xs])
    assert 0 < sum(took) < len(took), "the inputs must cover both branches"
    np.save(tmp_path / "xs.npy", xs.numpy())

    r = _run([runtime_python, "-c", SCRIPT, art, tmp_path / "xs.npy", tmp_path / "ys.npy"],
             cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["found"] == [], f"{info['found']} importable in the runtime-only venv"
    venv_dir = runtime_python.parent.parent
    assert Path(info["runtime"]).is_relative_to(venv_dir), info["runtime"]
    assert info["dycomp"] is None, "alone, dycomp is a namespace package (no compiler)"
    np.testing.assert_allclose(np.load(tmp_path / "ys.npy"), expected, rtol=1e-4, atol=1e-4)


def build_compiler_wheel(out: Path) -> Path:
    """The compiler's wheel, built from a copy of its sources (not `runtime/`)."""
    src = out / "src"
    skip = shutil.ignore_patterns("__pycache__", "runtime", "passes")  # dycomp/'s dev links
    shutil.copytree(ROOT / "dycomp", src / "dycomp", ignore=skip)
    shutil.copytree(ROOT / "passes", src / "passes", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "-w", out / "dist", src])
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (out / "dist").glob("dycomp-*.whl")
    return wheel


def test_compiler_wheel_finds_runtime_in_another_path_entry(runtime_python, tmp_path):
    """The compiler's wheel ships no dycomp/runtime and requires dycomp-runtime; unpacked in
    another sys.path entry than the runtime, `dycomp` is its regular package and
    `dycomp.runtime` is still the runtime distribution's."""

    wheel = build_compiler_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "dycomp/__init__.py" in names and "dycomp/passes/__init__.py" in names
    assert not [n for n in names if n.startswith("dycomp/runtime/")]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    assert b"Requires-Dist: dycomp-runtime[sign]==0.1.0" in meta
    r = _run([runtime_python, "-m", "pip", "install", "-q", "--no-deps", "--target",
              tmp_path / "compiler", wheel])
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import dycomp, dycomp.runtime, dycomp.errors as e; "
            "print(dycomp.__file__); print(dycomp.runtime.__file__); "
            "assert e.ArtifactError is dycomp.runtime.ArtifactError")
    env = {"PYTHONPATH": str(tmp_path / "compiler")}
    r = subprocess.run([str(runtime_python), "-c", code], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    compiler_init, runtime_init = r.stdout.split()
    assert Path(compiler_init).is_relative_to(tmp_path / "compiler")
    assert Path(runtime_init).is_relative_to(runtime_python.parent.parent)
