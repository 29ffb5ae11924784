"""The `dycomp` command line: help, compile -> run -> inspect, and one-line user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dycomp
from dycomp.cli import compress_lines, flatten_outputs, main, one_line

ROOT = Path(__file__).resolve().parents[1]
MODELS = str(ROOT / "tests" / "cli_models.py")
MULTI_EXIT = str(ROOT / "examples" / "zoo" / "multi_exit.py")


def cli(*argv) -> subprocess.CompletedProcess:
    """`python -m dycomp ...` in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DYCOMP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dycomp", *map(str, argv)], env=env,
                          capture_output=True, text=True, cwd=ROOT)


def torch_free(*argv, cwd=ROOT) -> subprocess.CompletedProcess:
    """`main(argv)` in a fresh interpreter where `import torch` fails."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from dycomp.cli import main\n"
            f"rc = main({[str(a) for a in argv]!r})\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
            "sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=cwd)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def call(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- help ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["compile"], ["run"], ["inspect"]])
def test_help_at_every_level(capsys, command):
    code, out, _ = call(capsys, *command, "--help")
    assert code == 0
    assert "usage: dycomp" in out and "example" in out


def test_version(capsys):
    code, out, _ = call(capsys, "--version")
    assert code == 0 and out.strip() == f"dycomp {dycomp.__version__}"


def test_no_command_prints_help(capsys):
    code, out, _ = call(capsys)
    assert code == 2 and "commands" in out


# -- user errors ---------------------------------------------------------------------------
USAGE_ERRORS = [
    (["compile", "model_without_factory.py"], "must look like path/to/model.py:factory"),
    (["compile", "a b:make"], "neither a .py file nor a dotted module name"),
    (["compile", "tests/cli_models.py:1x"], "is not a Python name"),
    (["compile", "tests/missing.py:make"], "does not exist"),
    (["compile", "no_such_pkg.models:make"], "no module named 'no_such_pkg.models'"),
    (["compile", f"{MODELS}:nosuch"], "has no attribute 'nosuch'; it defines Gate"),
    (["compile", f"{MODELS}:not_a_model"], "returned 42 (int)"),
    (["compile", f"{MODELS}:NOT_CALLABLE"], "is 3 (int), not an nn.Module class"),
    (["compile", f"{MODELS}:needs_args"], "needs arguments (width)"),
    (["compile", f"{MODELS}:Gate"], "gives no example inputs; give their shapes with --input"),
    (["compile", f"{MODELS}:Gate", "--input", "1xAx3"], "bad --input '1xAx3'"),
    (["compile", f"{MODELS}:Gate", "--input", "1x4:float8"], "unknown dtype 'float8'"),
    (["compile", f"{MODELS}:make", "--method", "nope"], "Gate has no method 'nope'"),
    (["compile", f"{MODELS}:make", "--backend", "torch", "-o", "x.dyc"], "-o needs --backend"),
    (["compile", f"{MODELS}:make", "--backend", "tflite"], "invalid choice: 'tflite'"),
    (["compile", f"{MODELS}:make", "--tune-trials", "4"], "--tune-trials needs --backend tvm"),
    (["compile", f"{MODELS}:make", "--backend", "tvm", "--tune-trials", "-1"],
     "--tune-trials must be >= 0"),
    (["compile", f"{MODELS}:make", "--strict", "--tune-db", "db"],
     "--tune-db, --strict need --backend tvm"),
    (["compile", f"{MODELS}:make", "--threads", "0"], "--threads must be at least 1"),
    (["compile", f"{MODELS}:make", "--checkpoint", "missing.pt"], "does not exist"),
    (["compile", f"{MODELS}:make", "--prune", "1.5"], "--prune must be a fraction"),
    (["compile", f"{MODELS}:make", "--prune-allocation", "layer_adaptive"],
     "--prune-allocation needs --prune"),
    (["compile", f"{MODELS}:make", "--prune-round-to", "16"], "--prune-round-to needs --prune"),
    (["compile", f"{MODELS}:make", "--prune", "0.5", "--prune-round-to", "0"],
     "expected a channel count >= 1 or 'auto', got '0'"),
    (["compile", f"{MODELS}:make", "--quantize", "int8", "--backend", "tvm"],
     "--quantize needs --backend onnx"),
    (["compile", f"{MODELS}:make", "--calib", "c.npz"], "--calib needs --quantize int8"),
    (["compile", f"{MODELS}:make", "--quantize", "int8", "--calib", "missing.npz"],
     "must be an existing .npz file"),
    (["compile"], "required: TARGET"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "net.dyc"], "give the inputs with --input"),
    (["run", "net.dyc", "--input", "x.txt"], "must be a .npy or .npz file"),
    (["run", "net.dyc", "--input", "missing.npy"], "does not exist"),
]


@pytest.mark.parametrize("argv,message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_exit_2(capsys, argv, message):
    code, _, err = call(capsys, *argv)
    assert code == 2
    assert message in one_error_line(err)


def test_factory_exception_is_one_line_exit_1(capsys):
    code, _, err = call(capsys, "compile", f"{MODELS}:broken")
    assert code == 1
    assert "broken() raised RuntimeError: the factory itself failed" in one_error_line(err)


def test_unsupported_construct_exit_1(capsys):
    code, _, err = call(capsys, "compile", f"{MODELS}:LoopElse", "--input", "2x3",
                        "--backend", "torch")
    assert code == 1
    assert "loop `else:` clause" in one_error_line(err)


def test_check_mismatch_exit_1_and_no_check_skips_it(capsys):
    argv = ["compile", f"{MODELS}:Noisy", "--input", "2x3", "--backend", "torch"]
    code, _, err = call(capsys, *argv)
    assert code == 1
    assert "compiled model differs from eager" in one_error_line(err)
    code, out, err = call(capsys, *argv, "--no-check")
    assert code == 0 and err == "" and "skipped" in out


def test_checkpoint_errors(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"a.weight": torch.zeros(4, 4)}}, bad)
    code, _, err = call(capsys, "compile", f"{MODELS}:make", "--checkpoint", bad)
    assert code == 2
    assert "does not fit Gate: missing a.bias, b.bias, b.weight" in one_error_line(err)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    code, _, err = call(capsys, "compile", f"{MODELS}:make", "--checkpoint", garbage)
    assert code == 2 and "cannot read checkpoint" in one_error_line(err)


def test_subprocess_error_has_no_traceback_unless_debug():
    r = cli("compile", f"{MODELS}:LoopElse", "--input", "2x3", "--backend", "torch")
    assert r.returncode == 1 and "loop `else:` clause" in one_error_line(r.stderr)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DYCOMP_DEBUG": "1"}
    r = subprocess.run([sys.executable, "-m", "dycomp", "compile", f"{MODELS}:LoopElse",
                        "--input", "2x3", "--backend", "torch"], env=env, capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "UnsupportedError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


# -- compile without saving ----------------------------------------------------------------
def test_compile_torch_backend_prints_summary(capsys):
    code, out, err = call(capsys, "compile", "tests.cli_models:make", "--backend", "torch")
    assert code == 0 and err == ""
    for stage in ("load tests.cli_models:make", "capture + compile (torch)", "check against"):
        assert stage in out
    assert "matched eager on 3 inputs" in out and "not saved (no -o)" in out
    assert "branches" in out and "returns" in out


def test_compile_with_input_shapes_and_module_factory(capsys):
    code, out, _ = call(capsys, "compile", f"{MODELS}:make_module_only", "--input", "1x4",
                        "--backend", "torch")
    assert code == 0 and "matched eager on 3 inputs" in out


# -- output helpers ------------------------------------------------------------------------
def test_flatten_outputs_keys():
    a = np.zeros(2)
    leaves = dict(flatten_outputs((a, [a, (1, True)], {"k": 2.0}, [0.1, 0.2], None)))
    assert list(leaves) == ["out_0", "out_1_0", "out_1_1_0", "out_1_1_1", "out_2_k", "out_3",
                            "out_4"]
    assert leaves["out_3"] == [0.1, 0.2] and leaves["out_4"] is None
    assert list(dict(flatten_outputs(a))) == ["out"]
    assert dict(flatten_outputs(([], a))) == {"out_0": [], "out_1": a}


def test_one_line_messages():
    text = "2 ops cannot be exported:\n  region r4: bad\n  region r5: worse\n. Hint: use torch"
    assert one_line(text) == ("2 ops cannot be exported: region r4: bad; region r5: worse. "
                              "Hint: use torch")


def test_compress_lines():
    lines = ["m.py:81", "m.py:41", "m.py:42", "m.py:43", "m.py:45", "n.py:7", "<gen>"]
    assert compress_lines(lines) == "m.py:41-43, 45, 81; n.py:7; <gen>"


# -- compile -> run -> inspect (ONNX and TVM) ----------------------------------------------
@pytest.fixture(scope="module", params=["onnx", "tvm"])
def gate_artifact(request, tmp_path_factory):
    """tests/cli_models.py:make compiled in-process to an artifact for each backend."""
    out = tmp_path_factory.mktemp("gate") / "gate.dyc"
    assert main(["compile", MODELS + ":make", "--backend", request.param, "-o", str(out)]) == 0
    return out


def eager_gate(x: np.ndarray):
    from tests import cli_models

    model, _ = cli_models.make()
    with torch.no_grad():
        y, branch = model.eval()(torch.from_numpy(x))
    return y.numpy(), branch


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_run_saves_npz_matching_eager(gate_artifact, tmp_path, capsys, sign):
    x = (sign * np.abs(np.random.default_rng(0).standard_normal((1, 4)))).astype(np.float32)
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npz"
    np.save(x_path, x)
    code, out, err = call(capsys, "run", gate_artifact, "--input", x_path, "--out", y_path,
                          "--show-path", "--trust-native")
    assert code == 0 and err == ""
    expected, branch = eager_gate(x)
    with np.load(y_path) as saved:
        assert sorted(saved.files) == ["out_0", "out_1"]
        np.testing.assert_allclose(saved["out_0"], expected, rtol=1e-5, atol=1e-6)
        assert saved["out_1"] == branch
    assert "saved 2 output(s)" in out and "path: r0 -> " in out


def test_run_prints_outputs_and_reads_npz(gate_artifact, tmp_path, capsys):
    x = np.ones((1, 4), np.float32)
    named, positional = tmp_path / "named.npz", tmp_path / "positional.npz"
    name = dycomp.runtime.load(gate_artifact, trust_native=True).signature.inputs[0].name
    np.savez(named, **{name: x})
    np.savez(positional, x)
    outs = []
    for path in (named, positional):
        code, out, _ = call(capsys, "run", gate_artifact, "--input", path, "--trust-native")
        assert code == 0
        outs.append(out)
    assert outs[0] == outs[1]
    assert "out_0" in outs[0] and "float32[1,2]" in outs[0] and "out_1" in outs[0]


def test_run_input_errors(gate_artifact, tmp_path, capsys):
    wrong_shape, wrong_names = tmp_path / "x.npy", tmp_path / "bad.npz"
    np.save(wrong_shape, np.zeros((2, 4), np.float32))
    np.savez(wrong_names, y=np.zeros((1, 4), np.float32))
    code, _, err = call(capsys, "run", gate_artifact, "--trust-native", "--input", wrong_shape)
    assert code == 2 and "has shape [2, 4]; expected" in one_error_line(err)
    code, _, err = call(capsys, "run", gate_artifact, "--trust-native", "--input", wrong_names)
    assert code == 2 and "holds arrays y; name them" in one_error_line(err)
    code, _, err = call(capsys, "run", gate_artifact, "--trust-native", "--input", wrong_shape,
                        "--input", wrong_shape)
    assert code == 2 and "got 2 inputs" in one_error_line(err)


def test_inspect_shows_host_program_graph_and_subgraphs(gate_artifact, capsys):
    code, out, err = call(capsys, "inspect", gate_artifact)
    assert code == 0 and err == ""
    manifest = json.loads((gate_artifact / "manifest.json").read_text())
    backend, first = manifest["backend"], next(iter(manifest["subgraphs"]))  # onnx: fused
    for text in ("dycomp artifact", "host program", "def run(R,", "control-flow graph",
                 f"call {first}(", "subgraphs", "runs on", f"{first}   │ {backend}",
                 "cli_models.py:"):
        assert text in out, text


def test_inspect_tvm_artifact_says_untuned(gate_artifact, capsys):
    if json.loads((gate_artifact / "manifest.json").read_text())["backend"] != "tvm":
        pytest.skip("tvm artifacts only")
    code, out, _ = call(capsys, "inspect", gate_artifact)
    assert code == 0 and "apache-tvm 0." in out and "UNTUNED" in out


def test_compile_tvm_summary_says_untuned(capsys):
    code, out, _ = call(capsys, "compile", MODELS + ":make", "--backend", "tvm")
    assert code == 0 and "UNTUNED" in out and "region(s) on TVM" in out


def test_missing_and_tampered_artifacts_exit_1(gate_artifact, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 4), np.float32))
    code, _, err = call(capsys, "run", tmp_path / "nothing.dyc", "--input", x)
    assert code == 1 and "not a dycomp artifact directory" in one_error_line(err)
    tampered = tmp_path / "tampered.dyc"
    tampered.mkdir()
    for f in gate_artifact.rglob("*"):
        if f.is_file():
            (tampered / f.relative_to(gate_artifact)).parent.mkdir(exist_ok=True)
            (tampered / f.relative_to(gate_artifact)).write_bytes(f.read_bytes())
    host = tampered / "host.py"
    host.write_text(host.read_text() + "\n# edited\n")
    for argv in (["run", tampered, "--trust-native", "--input", x], ["inspect", tampered]):
        code, _, err = call(capsys, *argv)
        assert code == 1 and "sha256 mismatch" in one_error_line(err)


def test_run_and_inspect_without_torch(gate_artifact, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, -np.ones((1, 4), np.float32))
    r = torch_free("run", gate_artifact, "--input", x, "--show-path", "--trust-native")
    assert r.returncode == 0, r.stderr
    assert "path: r0" in r.stdout
    r = torch_free("inspect", gate_artifact)
    assert r.returncode == 0, r.stderr
    assert "subgraphs" in r.stdout
    r = torch_free("run", gate_artifact, "--trust-native", "--input", tmp_path / "missing.npy")
    assert r.returncode == 2 and "does not exist" in one_error_line(r.stderr)


def test_end_to_end_multi_exit_with_checkpoint(tmp_path, capsys):
    """A zoo model and a checkpoint compiled by `python -m dycomp`, run on inputs that leave
    through different exits, and inspected."""
    pytest.importorskip("onnxruntime")
    from examples.zoo import multi_exit

    model, _ = multi_exit.make(seed=1)  # other weights than the factory's make(seed=0)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    art = tmp_path / "multi_exit.dyc"
    r = cli("compile", f"{MULTI_EXIT}:make", "--checkpoint", ckpt, "--threads", "1", "--no-check",
            "-o", art)
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stdout and "multi_exit.dyc (" in r.stdout
    manifest = json.loads((art / "manifest.json").read_text())
    paths, exits = set(), set()
    for i, (x,) in enumerate(multi_exit.sample_inputs(6, seed=3)):
        np.save(tmp_path / f"x{i}.npy", x.numpy())
        code, out, err = call(capsys, "run", art, "--input", tmp_path / f"x{i}.npy", "--out",
                              tmp_path / f"y{i}.npz", "--show-path")
        assert code == 0, err
        paths.add(out.split("path: ")[1].strip())
        with torch.no_grad():
            logits, exit_id, confident = model(x)
        with np.load(tmp_path / f"y{i}.npz") as y:
            np.testing.assert_allclose(y["out_0"], logits.numpy(), rtol=1e-4, atol=1e-4)
            assert y["out_1"] == exit_id and y["out_2"] == confident
        exits.add(exit_id)
    assert len(exits) > 1  # different inputs took different exits ...
    assert list(manifest["subgraphs"]) == ["f1"]  # ... inside one subgraph (nested ONNX If),
    assert len(paths) > 1 and all(p.startswith("r0 ") for p in paths)  # which says where
    code, out, _ = call(capsys, "inspect", art)
    assert code == 0 and all(name in out for name in manifest["subgraphs"])
    assert f"(fuses {len(manifest['subgraphs']['f1']['ran'])} regions)" in out


def test_compile_prune_and_quantize_reports_agreement(tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 1, 3, 32, 32),
                                                                dtype=np.float32))
    out = tmp_path / "q.dyc"
    code, stdout, _ = call(capsys, "compile", "examples/zoo/static_resnet.py:make",
                           "--prune", "0.5", "--quantize", "int8", "--calib", calib, "-o", out)
    assert code == 0
    assert "pruned 175,258 -> 44,370 parameters" in stdout
    assert "of 1 subgraphs (static)" in stdout
    assert "vs eager on 32 inputs: same path 100%" in stdout
    assert (out / "manifest.json").is_file()
    assert dycomp.load(out).optimizations[1].startswith("quantized ")
    code, stdout, _ = call(capsys, "compile", "examples/zoo/static_resnet.py:make",
                           "--prune", "0.5", "--prune-round-to", "16")
    assert code == 0 and "175,258 -> 52,858 parameters" in stdout
    assert "channels kept in multiples of 16" in stdout
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3, 32, 32), np.float32))
    code, _, err = call(capsys, "compile", "examples/zoo/static_resnet.py:make",
                        "--quantize", "int8", "--calib", bad)
    assert code == 2 and "expected (N, 1, 3, 32, 32)" in one_error_line(err)
