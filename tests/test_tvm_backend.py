"""The TVM backend: tuning with a persistent database, per-region fallback to ONNX Runtime,
--strict, artifacts that run without torch. (Every zoo path on backend tvm: test_zoo.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
from dycomp import runtime as rt
from dycomp.backends.tvm_backend import TuneConfig
from dycomp.runtime.artifact import TVM_LIBRARY
from examples.zoo import ZOO
from tests.helpers import assert_matches_eager, randn_inputs


class LinearReLU(nn.Module):
    """One region, one fused kernel: the smallest thing worth tuning."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_tuning_fills_the_database_and_a_second_compile_reuses_it(tmp_path):
    model, db = LinearReLU().eval(), tmp_path / "db"
    xs = randn_inputs((1, 16), 20)
    cm, _ = assert_matches_eager(model, xs, backend="tvm", tune=TuneConfig(trials=2, db=db))
    first = cm.executor.report
    assert first.tuned and first.tasks >= 1 and first.tuned_now == first.tasks
    assert first.reused == 0 and first.tune_seconds > 0
    records = (db / "database_tuning_record.json").read_text().strip().splitlines()
    assert len(records) >= first.tasks
    again, _ = assert_matches_eager(model, xs, backend="tvm",
                                    tune=TuneConfig(trials=2, db=db))
    second = again.executor.report
    assert (second.reused, second.tuned_now, second.tune_seconds) == (first.tasks, 0, 0.0)
    assert "reused" in second.summary()


def test_untuned_compile_says_so():
    cm = dycomp.compile(LinearReLU().eval(), torch.randn(1, 16), backend="tvm")
    assert not cm.executor.report.tuned
    assert "UNTUNED" in cm.executor.report.summary()


@pytest.mark.parametrize("bad", [{"trials": -1}, {"trials": 1.5}, {"trials": True},
                                 {"seed": "x"}])
def test_tune_config_is_validated(bad):
    with pytest.raises(ValueError, match="TuneConfig"):
        TuneConfig(**bad)


def test_unusable_tuning_database_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(dycomp.DycompError, match="tuning database .*--tune-db"):
        dycomp.compile(LinearReLU().eval(), torch.randn(1, 16), backend="tvm",
                       tune=TuneConfig(trials=1, db=blocker / "db"), check=False)


def test_tune_applies_to_tvm_only():
    with pytest.raises(dycomp.UnsupportedError, match="backend 'tvm'"):
        dycomp.compile(LinearReLU().eval(), torch.randn(1, 16), backend="onnx",
                       tune=TuneConfig(trials=1))


# -- fallback ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder_tvm():
    model, example = ZOO["decoder"].make()
    return model, dycomp.compile(model, example, backend="tvm")


def test_regions_tvm_cannot_compile_run_on_onnx_runtime(decoder_tvm):
    model, cm = decoder_tvm
    report = cm.executor.report
    assert "GRU" in " ".join(report.fallback.values())  # no TVM importer for ONNX GRU
    assert set(cm.executor.placement.values()) <= {"tvm", "onnx"}
    assert {n for n, b in cm.executor.placement.items() if b == "onnx"} == set(report.fallback)
    assert "on ONNX Runtime" in report.summary()
    assert_matches_eager(model, ZOO["decoder"].sample_inputs(30), cm=cm)


def test_strict_lists_every_region_tvm_cannot_compile():
    model, example = ZOO["decoder"].make()
    with pytest.raises(dycomp.UnsupportedError) as e:
        dycomp.compile(model, example, backend="tvm", strict=True, check=False)
    text = str(e.value)
    assert "TVM cannot compile" in text and "GRU" in text and "decoder.py:" in text
    assert set(e.value.regions)  # region -> reason, for tools


# -- artifacts --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nested_tvm():
    """nested_if on backend tvm: one region (a ReduceProd of a shape) stays on ONNX Runtime."""
    model, example = ZOO["nested_if"].make()
    return model, dycomp.compile(model, example, backend="tvm")


NO_TORCH = r"""
import json, sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np
from dycomp import runtime as rt
from dycomp.runtime.artifact import TVM_LIBRARY
art = rt.load(sys.argv[1], trust_native=True)
res = [art(x, return_path=True) for x in np.load(sys.argv[2])]
assert not [m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None]
print(json.dumps([[out["logits"].tolist(), out["n_active"], list(path)] for out, path in res]))
"""


def test_tvm_artifact_with_fallback_runs_without_torch(nested_tvm, tmp_path):
    model, cm = nested_tvm
    path = cm.save(tmp_path / "nested.dyc")
    manifest = json.loads((path / "manifest.json").read_text())
    backends = {s["backend"] for s in manifest["subgraphs"].values()}
    assert manifest["backend"] == "tvm" and backends == {"tvm", "onnx"}
    assert (path / TVM_LIBRARY).is_file() and manifest["tvm"]["fallback"]
    inputs = ZOO["nested_if"].sample_inputs(20)
    np.save(tmp_path / "xs.npy", torch.stack([x for (x,) in inputs]).numpy())
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(path), str(tmp_path / "xs.npy")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for (x,), (logits, n_active, run_path) in zip(inputs, json.loads(r.stdout.splitlines()[-1])):
        with torch.no_grad():
            expected = model(x)
        np.testing.assert_allclose(logits, expected["logits"].numpy(), atol=1e-4, rtol=1e-4)
        assert n_active == expected["n_active"]
        assert tuple(run_path) == cm.run(x, return_path=True)[1]
    assert_matches_eager(model, inputs, cm=dycomp.load(path, trust_native=True))


def test_tampered_tvm_library_is_rejected(nested_tvm, tmp_path):
    path = nested_tvm[1].save(tmp_path / "nested.dyc")
    lib = path / TVM_LIBRARY
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(dycomp.ArtifactError, match="sha256 mismatch"):
        rt.load(path, trust_native=True)


def test_runtime_imports_tvm_without_torch():
    code = ("import sys\nfrom dycomp.runtime.tvm_executor import import_tvm\nimport_tvm()\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"  # tvm_ffi would import torch; dycomp hides it
