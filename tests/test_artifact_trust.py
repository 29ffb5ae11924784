"""Trust in saved artifacts (issue #24): native code needs consent, Ed25519 signatures over
the manifest, and every file the loader opens stays inside the artifact directory."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dycomp
from dycomp import runtime as rt
from dycomp.runtime import trust
from dycomp.runtime.artifact import TVM_LIBRARY
from tests import cli_models
from tests.test_cli import call, one_error_line, torch_free

X_POS = np.abs(np.random.default_rng(0).standard_normal((1, 4))).astype(np.float32)
INPUTS = [X_POS, -X_POS, np.ones((1, 4), np.float32), -np.ones((1, 4), np.float32)]


def _eager(x: np.ndarray):
    model, _ = cli_models.make()
    with torch.no_grad():
        y, branch = model.eval()(torch.from_numpy(x))
    return y.numpy(), branch


def _assert_matches_eager(art) -> None:
    branches = set()
    for x in INPUTS:
        (y, branch), expected = art(x), _eager(x)
        np.testing.assert_allclose(y, expected[0], rtol=1e-4, atol=1e-4)
        assert branch == expected[1]
        branches.add(branch)
    assert branches == {0, 1}  # both paths covered


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The gate model of tests/cli_models.py saved for backend onnx."""
    model, example = cli_models.make()
    cm = dycomp.compile(model, example, backend="onnx", check=False)
    return cm.save(tmp_path_factory.mktemp("trust") / "gate.dyc")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two Ed25519 key pairs: (private, public) of the signer and of someone else."""
    d = tmp_path_factory.mktemp("keys")
    trust.keygen(d / "signer", d / "signer.pub")
    trust.keygen(d / "other", d / "other.pub")
    return d


@pytest.fixture
def art(saved, tmp_path):
    """A private copy of the saved artifact, free to tamper with."""
    return Path(shutil.copytree(saved, tmp_path / "gate.dyc"))


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _rehash(path: Path, rel: str) -> None:
    """What an attacker does after editing a file: put its new sha256 in the manifest."""
    m = _manifest(path)
    m["files"][rel] = hashlib.sha256((path / rel).read_bytes()).hexdigest()
    _write_manifest(path, m)


def _onnx_file(path: Path) -> str:
    return next(f for f in _manifest(path)["files"] if f.endswith(".onnx"))


# -- native code needs consent ---------------------------------------------------------------
def _fake_tvm(path: Path) -> bytes:
    """Turn the onnx artifact into one whose subgraph is TVM code in a regions.so that is not
    even a valid library (hashes consistent): loading it must never be attempted unasked."""
    library = b"\x7fELF not a library: loading it would fail loudly"
    (path / TVM_LIBRARY).write_bytes(library)
    m = _manifest(path)
    name = next(iter(m["subgraphs"]))
    m["subgraphs"] = {name: {**m["subgraphs"][name], "backend": "tvm", "file": TVM_LIBRARY,
                             "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
                             "outputs": [{"dtype": "float32"}, {"dtype": "int64"}]}}
    m["subgraphs"][name].pop("ran", None)
    m["backend"] = "tvm"
    m["files"][TVM_LIBRARY] = hashlib.sha256(library).hexdigest()
    _write_manifest(path, m)
    return library


class _RecordingTvm:
    """Stands in for TvmExecutor: records the library it was given, loads nothing."""

    built: list = []

    def __init__(self, library, signatures, threads=1):
        _RecordingTvm.built.append(library)

    def __call__(self, region, *args):
        raise AssertionError("not called in these tests")


@pytest.fixture
def fake_tvm(art, monkeypatch):
    from dycomp.runtime import tvm_executor

    _RecordingTvm.built = []
    monkeypatch.setattr(tvm_executor, "TvmExecutor", _RecordingTvm)
    return art, _fake_tvm(art)


def test_native_code_is_refused_without_consent_before_it_is_loaded(fake_tvm):
    path, _ = fake_tvm
    for load in (rt.load, dycomp.load):
        with pytest.raises(dycomp.ArtifactError) as e:
            load(path)
        text = str(e.value)
        for part in ("contains native code", "subgraphs/regions.so (1 subgraph)",
                     "trust_native=True", "--trust-native", "public_key="):
            assert part in text, part
    assert _RecordingTvm.built == []  # the library was never handed to TVM


def test_trust_native_or_a_verified_signature_is_consent(fake_tvm, keys):
    path, library = fake_tvm
    rt.load(path, trust_native=True)
    assert _RecordingTvm.built == [library]
    rt.sign(path, keys / "signer")
    rt.load(path, public_key=keys / "signer.pub")
    assert _RecordingTvm.built == [library, library]
    with pytest.raises(dycomp.ArtifactError, match="not by the given public key"):
        rt.load(path, public_key=keys / "other.pub")  # a signature by someone else is not
    assert len(_RecordingTvm.built) == 2


def test_onnx_only_artifacts_need_no_consent(art):
    assert trust.native_code(_manifest(art)) == {}
    _assert_matches_eager(rt.load(art))


@pytest.fixture(scope="module")
def tvm_saved(tmp_path_factory):
    """The gate model on backend tvm (a real regions.so; untuned, about 10 s)."""
    model, example = cli_models.make()
    cm = dycomp.compile(model, example, backend="tvm", check=False)
    return cm.save(tmp_path_factory.mktemp("tvm") / "gate.dyc")


def test_real_tvm_artifact_consent_and_signature(tvm_saved, keys, tmp_path):
    path = Path(shutil.copytree(tvm_saved, tmp_path / "t.dyc"))
    with pytest.raises(dycomp.ArtifactError, match="contains native code"):
        rt.load(path)
    _assert_matches_eager(rt.load(path, trust_native=True))
    rt.sign(path, keys / "signer")
    _assert_matches_eager(rt.load(path, public_key=keys / "signer.pub"))


# -- signatures ------------------------------------------------------------------------------
def test_signed_onnx_artifact_verifies(art, keys):
    record = rt.sign(art, keys / "signer")
    on_disk = json.loads((art / trust.SIGNATURE).read_text())
    assert on_disk == record and on_disk["algorithm"] == "Ed25519"
    assert on_disk["key"] == trust.fingerprint(trust.load_public_key(keys / "signer.pub"))
    _assert_matches_eager(rt.load(art, public_key=keys / "signer.pub"))
    pem = (keys / "signer.pub").read_bytes()
    _assert_matches_eager(rt.load(art, public_key=pem))  # PEM bytes work too
    _assert_matches_eager(rt.load(art, public_key=pem.decode()))  # and PEM text
    assert dycomp.load(art, public_key=str(keys / "signer.pub")).backend == "onnx"
    _assert_matches_eager(rt.load(art))  # without a public key the signature is not needed


def _edit_host(p: Path) -> None:
    (p / "host.py").write_text("import os\n" + (p / "host.py").read_text())
    _rehash(p, "host.py")


def _edit_onnx(p: Path) -> None:
    rel = _onnx_file(p)
    data = bytearray((p / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (p / rel).write_bytes(bytes(data))
    _rehash(p, rel)


def _edit_manifest(p: Path) -> None:
    m = _manifest(p)
    m["method"] = "something_else"
    _write_manifest(p, m)


def _flip_signature(p: Path) -> None:
    rec = json.loads((p / trust.SIGNATURE).read_text())
    sig = bytearray(base64.b64decode(rec["signature"]))
    sig[0] ^= 1
    rec["signature"] = base64.b64encode(bytes(sig)).decode()
    (p / trust.SIGNATURE).write_text(json.dumps(rec))


TAMPER = {
    "manifest": (_edit_manifest, "does not match manifest.json"),
    "host.py, hash recomputed": (_edit_host, "does not match manifest.json"),
    "onnx file, hash recomputed": (_edit_onnx, "does not match manifest.json"),
    "onnx file, hash kept": (lambda p: (p / _onnx_file(p)).write_bytes(b"junk"),
                             "sha256 mismatch"),
    "signature bytes": (_flip_signature, "does not match manifest.json"),
    "signature not JSON": (lambda p: (p / trust.SIGNATURE).write_text("{"), "not valid JSON"),
    "signature not base64": (lambda p: (p / trust.SIGNATURE).write_text(json.dumps(
        {**json.loads((p / trust.SIGNATURE).read_text()), "signature": "@@"})),
        "'signature' is not base64"),
    "signature missing": (lambda p: (p / trust.SIGNATURE).unlink(), "is missing; the artifact "
                                                                     "is not signed"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_after_signing_is_refused(art, keys, case):
    rt.sign(art, keys / "signer")
    tamper, message = TAMPER[case]
    tamper(art)
    if case in ("manifest", "host.py, hash recomputed"):
        rt.load(art)  # consistent hashes: without a public key nothing catches it
    for load in (rt.load, dycomp.load):
        with pytest.raises(dycomp.ArtifactError) as e:
            load(art, public_key=keys / "signer.pub")
        assert message in str(e.value)


def test_key_errors_are_clear(art, keys, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "ec").write_bytes(ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "junk.pub").write_text("hello")
    rt.sign(art, keys / "signer")
    cases = [(tmp_path / "missing.pub", "does not exist"),
             (keys / "signer", "holds a private key: give the public key"),
             (tmp_path / "ec.pub", "EC key; dycomp signatures use Ed25519"),
             (tmp_path / "junk.pub", "is not a PEM public key"),
             (keys / "other.pub", "not by the given public key")]
    for key, message in cases:
        with pytest.raises(dycomp.ArtifactError, match=message):
            rt.load(art, public_key=key)
    for key, message in [(tmp_path / "missing", "does not exist"),
                         (tmp_path / "ec", "EC key; dycomp signs with Ed25519"),
                         (keys / "signer.pub", "holds a public key: sign with the private")]:
        with pytest.raises(dycomp.ArtifactError, match=message):
            rt.sign(art, key)


def test_sign_checks_the_artifact_first(art, keys):
    (art / "host.py").write_text("tampered")
    with pytest.raises(dycomp.ArtifactError, match="sha256 mismatch"):
        rt.sign(art, keys / "signer")
    assert not (art / trust.SIGNATURE).exists()


def test_keygen_never_overwrites(keys):
    with pytest.raises(dycomp.ArtifactError, match="refusing to overwrite"):
        trust.keygen(keys / "signer", keys / "new.pub")
    assert not (keys / "new.pub").exists()
    assert os.stat(keys / "signer").st_mode & 0o077 == 0  # private key: owner only


# -- paths stay inside -----------------------------------------------------------------------
def _set_files(p: Path, **change) -> None:
    m = _manifest(p)
    for old, new in change.items():
        m["files"][new] = m["files"].pop(old)
    _write_manifest(p, m)


def _subgraph_file(p: Path, new: str) -> None:
    m = _manifest(p)
    next(iter(m["subgraphs"].values()))["file"] = new
    _write_manifest(p, m)


def _symlink_file(p: Path) -> None:
    """The onnx file replaced by a symlink to an identical copy outside (hash matches)."""
    rel = _onnx_file(p)
    outside = p.parent / "outside.onnx"
    shutil.copy(p / rel, outside)
    (p / rel).unlink()
    (p / rel).symlink_to(outside)


def _symlink_dir(p: Path) -> None:
    shutil.move(p / "subgraphs", p.parent / "elsewhere")
    (p / "subgraphs").symlink_to(p.parent / "elsewhere", target_is_directory=True)


def _symlink_manifest(p: Path) -> None:
    shutil.move(p / "manifest.json", p.parent / "m.json")
    (p / "manifest.json").symlink_to(p.parent / "m.json")


ESCAPES = {
    "absolute file": (lambda p: _set_files(p, **{"host.py": "/etc/passwd"}),
                      "files['/etc/passwd']: file path '/etc/passwd' leaves the artifact"),
    "dotdot file": (lambda p: _set_files(p, **{"host.py": "subgraphs/../../x"}),
                    "files['subgraphs/../../x']: file path"),
    "dot file": (lambda p: _set_files(p, **{"host.py": "./host.py"}), "files['./host.py']"),
    "absolute subgraph": (lambda p: _subgraph_file(p, "/tmp/x.onnx"), ".file: file path "
                                                                      "'/tmp/x.onnx' leaves"),
    "dotdot subgraph": (lambda p: _subgraph_file(p, "../x.onnx"), ".file: file path '../x.onnx'"),
    "symlinked file": (_symlink_file, "is a symlink, or lies in a symlinked directory, that "
                                      "leaves the artifact"),
    "symlinked directory": (_symlink_dir, "lies in a symlinked directory, that leaves"),
    "symlinked manifest": (_symlink_manifest, "manifest.json: 'manifest.json' is a symlink"),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_paths_that_leave_the_artifact_are_refused(art, case):
    escape, message = ESCAPES[case]
    escape(art)
    for load in (rt.load, dycomp.load):
        with pytest.raises(dycomp.ArtifactError) as e:
            load(art)
        assert message in str(e.value), str(e.value)


def test_symlinks_inside_the_artifact_are_fine(art):
    rel = _onnx_file(art)
    (art / "store").mkdir()
    shutil.move(art / rel, art / "store" / "model.onnx")
    (art / rel).symlink_to(Path("..") / "store" / "model.onnx")
    _assert_matches_eager(rt.load(art))


def test_only_listed_files_are_opened(art, keys, monkeypatch):
    """Every file the loader opens is the manifest, the signature or one the manifest
    lists (and hashes); an extra file lying in the artifact is never read."""
    rt.sign(art, keys / "signer")
    (art / "subgraphs" / "extra.onnx").write_bytes(b"never read")
    opened, real_open = [], io.open

    def recording_open(file, *a, **k):
        opened.append(Path(file).resolve())
        return real_open(file, *a, **k)

    monkeypatch.setattr(io, "open", recording_open)
    rt.load(art, public_key=keys / "signer.pub")
    monkeypatch.undo()
    inside = {p.relative_to(art.resolve()).as_posix() for p in opened
              if p.is_relative_to(art.resolve())}
    listed = set(_manifest(art)["files"])
    assert inside == listed | {"manifest.json", trust.SIGNATURE}


# -- command line ----------------------------------------------------------------------------
def test_cli_keygen_sign_run_public_key(art, tmp_path, capsys):
    key = tmp_path / "k"
    code, out, err = call(capsys, "keygen", key)
    assert code == 0 and err == "" and "sha256:" in out and (tmp_path / "k.pub").is_file()
    code, _, err = call(capsys, "keygen", key)
    assert code == 1 and "refusing to overwrite" in one_error_line(err)
    code, out, err = call(capsys, "sign", art, "--key", key)
    assert code == 0 and err == "" and "signed" in out and (art / trust.SIGNATURE).is_file()
    x = tmp_path / "x.npy"
    np.save(x, X_POS)
    code, out, err = call(capsys, "run", art, "--input", x, "--public-key", tmp_path / "k.pub")
    assert code == 0 and err == "" and "out_0" in out
    _edit_host(art)
    code, _, err = call(capsys, "run", art, "--input", x, "--public-key", tmp_path / "k.pub")
    assert code == 1 and "does not match manifest.json" in one_error_line(err)
    code, _, err = call(capsys, "sign", art, "--key", tmp_path / "missing")
    assert code == 1 and "does not exist" in one_error_line(err)


def test_cli_native_code_needs_trust_native(fake_tvm, tmp_path, capsys):
    path, _ = fake_tvm
    x = tmp_path / "x.npy"
    np.save(x, X_POS)
    code, _, err = call(capsys, "run", path, "--input", x)
    line = one_error_line(err)
    assert code == 1 and "contains native code" in line and "--trust-native" in line
    assert _RecordingTvm.built == []


def test_cli_verifies_without_torch(saved, keys, tmp_path):
    art = Path(shutil.copytree(saved, tmp_path / "a.dyc"))
    rt.sign(art, keys / "signer")
    x = tmp_path / "x.npy"
    np.save(x, -X_POS)
    r = torch_free("run", art, "--input", x, "--public-key", keys / "signer.pub")
    assert r.returncode == 0 and "out_0" in r.stdout, r.stderr
    r = torch_free("run", art, "--input", x, "--public-key", keys / "other.pub")
    assert r.returncode == 1 and "not by the given public key" in one_error_line(r.stderr)


def test_cli_inspect_says_whether_signed_and_checks_a_key(art, keys, capsys):
    code, out, err = call(capsys, "inspect", art)
    assert code == 0 and err == "" and "unsigned; no native code" in out
    rt.sign(art, keys / "signer")
    fp = trust.fingerprint(trust.load_public_key(keys / "signer.pub"))
    code, out, _ = call(capsys, "inspect", art)
    assert code == 0 and f"signed by key {fp} (not verified" in " ".join(out.split())
    code, out, _ = call(capsys, "inspect", art, "--public-key", keys / "signer.pub")
    assert code == 0 and f"signature valid, by key {fp}" in " ".join(out.split())
    code, _, err = call(capsys, "inspect", art, "--public-key", keys / "other.pub")
    assert code == 1 and "not by the given public key" in one_error_line(err)


def test_cli_inspect_names_native_code_without_loading_it(fake_tvm, capsys):
    path, _ = fake_tvm
    code, out, _ = call(capsys, "inspect", path)
    assert code == 0 and "native code: " in out and "--trust-native" in " ".join(out.split())
    assert _RecordingTvm.built == []
