"""dycomp serve: the request protocol (parse, validate, encode) as plain functions, exact
per-request answers from `run_requests`, the CLI's configuration, and, where Ray Serve is
installed, one end-to-end run on loopback (answers == `art.run` answers, errors as JSON,
replicas without torch)."""

from __future__ import annotations

import importlib.util
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
from dycomp import runtime
from dycomp.cli import main
from dycomp.serve import ServeConfig, protocol, run_requests, runner
from dycomp.serve.protocol import RequestError, parse_request
from dycomp.serve.runner import answer_batch

JSON, NPZ = "application/json", "application/octet-stream"
PORT = 18765


class Gate(nn.Module):
    """Two inputs (a float matrix and an int64 step), one data-dependent branch, a tuple
    output with a Python bool."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x, k):
        h = torch.relu(self.a(x)) + k.float()
        if h.mean() > 0.5:
            return self.b(h), True
        return self.c(h) * 2.0, False


def _inputs(seed: int):
    rng = np.random.RandomState(seed)
    return (rng.randn(2, 8).astype(np.float32) * (1 + seed % 3),
            np.array([seed % 2], dtype=np.int64))


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    torch.manual_seed(0)
    x, k = (torch.from_numpy(v) for v in _inputs(0))
    cm = dycomp.compile(Gate().eval(), (x, k), backend="onnx", fuse_branches=False,
                        optimize=False)  # the arms stay regions: paths differ
    path = tmp_path_factory.mktemp("serve") / "gate.dyc"
    cm.save(path)
    return runtime.load(path)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _error(fn, *args, **kw) -> RequestError:
    with pytest.raises(RequestError) as e:
        fn(*args, **kw)
    return e.value


# -- parsing and validation ----------------------------------------------------------------
def test_json_by_name_and_positional_give_the_signature_arrays(art):
    x, k = _inputs(1)
    for doc in ({"inputs": {"x": x.tolist(), "k": k.tolist()}},
                {"inputs": [x.tolist(), k.tolist()]}, [x.tolist(), k.tolist()]):
        req = parse_request(json.dumps(doc).encode(), JSON, art.signature, want_path=True)
        assert [a.dtype for a in req.arrays] == [np.float32, np.int64]
        assert np.array_equal(req.arrays[0], x) and np.array_equal(req.arrays[1], k)
        assert req.want_path and not req.npz


def test_bad_json_requests_are_400_naming_the_problem(art):
    x, k = _inputs(1)
    cases = {
        b"{not json": "not JSON",
        json.dumps({"x": 1}).encode(): "one key 'inputs'",
        json.dumps({"inputs": 3}).encode(): "must be a list",
        json.dumps({"inputs": {"x": x.tolist()}}).encode(): "missing k",
        json.dumps({"inputs": {"x": x.tolist(), "k": [0], "z": 1}}).encode(): "unknown z",
        json.dumps([x.tolist()]).encode(): "got 1 inputs",
        json.dumps([x[:1].tolist(), k.tolist()]).encode(): "input x has shape [1, 8]",
        json.dumps([x.tolist(), [0.5]]).encode(): "does not convert exactly to int64",
        json.dumps([x.tolist(), ["a"]]).encode(): "not a numeric array",
        json.dumps([[[1, 2], [3]], k.tolist()]).encode(): "not a numeric array",
    }
    for body, text in cases.items():
        err = _error(parse_request, body, JSON, art.signature)
        assert err.status == 400 and text in str(err), (body, str(err))
    assert protocol.error_body("m", art.signature) == {
        "error": "m", "expected": "(x: float32[2, 8], k: int64[1])"}


def test_npz_requests_by_name_or_order_with_exact_dtypes(art):
    x, k = _inputs(2)
    for body in (_npz(x=x, k=k), _npz(arr_0=x, arr_1=k)):
        req = parse_request(body, "application/x-npz; charset=binary", art.signature)
        assert req.npz and np.array_equal(req.arrays[0], x) and req.arrays[1].dtype == np.int64
    err = _error(parse_request, _npz(x=x.astype(np.float64), k=k), NPZ, art.signature)
    assert err.status == 400 and "dtype float64" in str(err)
    err = _error(parse_request, _npz(y=x, k=k), NPZ, art.signature)
    assert err.status == 400 and "holds arrays k, y" in str(err)
    assert _error(parse_request, b"PK-not-a-zip", NPZ, art.signature).status == 400
    pickled = _npz(x=np.array([{"a": 1}], dtype=object), k=k)
    assert "not an .npz" in str(_error(parse_request, pickled, NPZ, art.signature))


def test_size_limits_are_413_for_bodies_and_unpacked_npz(art):
    x, k = _inputs(3)
    body = json.dumps([x.tolist(), k.tolist()]).encode()
    assert _error(parse_request, body, JSON, art.signature, limit=len(body) - 1).status == 413
    parse_request(body, JSON, art.signature, limit=len(body))
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((1000, 1000), np.float32), k=k)  # 4 MB in ~4 kB
    bomb = buf.getvalue()
    assert len(bomb) < 1 << 16
    err = _error(parse_request, bomb, NPZ, art.signature, limit=1 << 20)
    assert err.status == 413 and "over the limit" in str(err)
    assert _error(protocol.check_size, 11, 10).status == 413


def test_flags_and_content_types():
    assert [protocol.truthy(v) for v in (None, "", "1", "True", "yes", "0", "no")] == [
        False, True, True, True, True, False, False]
    assert protocol.is_npz("application/octet-stream") and protocol.is_npz("Application/X-NPZ")
    assert not protocol.is_npz("application/json") and not protocol.is_npz(None)


# -- answers -------------------------------------------------------------------------------
def test_json_answer_is_exact_and_carries_the_path():
    y = np.random.RandomState(0).randn(3, 5).astype(np.float32) / 7
    doc = json.loads(protocol.answer_json((y, True, [1, 2], None), ["r0", "r2"], "cond: yes"))
    back = np.asarray(doc["outputs"][0], dtype=np.float32)
    assert back.tobytes() == y.tobytes()  # float32 -> double -> float32 is lossless
    assert doc["outputs"][1:] == [True, [1, 2], None]
    assert doc["path"] == ["r0", "r2"] and doc["decisions"] == "cond: yes"
    assert "path" not in json.loads(protocol.answer_json(y))


def test_npz_answer_flattens_like_dycomp_run():
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = protocol.read_npz_answer(protocol.answer_npz(
        (y, (np.int64(3), [True, False]), {"h": y}, None), ["r1"], "exit 1"))
    assert sorted(out) == ["decisions", "out_0", "out_1_0", "out_1_1", "out_2_h", "path"]
    assert out["out_0"].dtype == np.float32 and np.array_equal(out["out_2_h"], y)
    assert out["out_1_1"].tolist() == [True, False] and out["path"].tolist() == ["r1"]
    assert str(out["decisions"]) == "exit 1"


# -- exact answers -------------------------------------------------------------------------
def test_run_requests_equals_one_at_a_time_and_isolates_errors(art):
    reqs = [_inputs(s) for s in range(8)]
    reqs.insert(3, (np.zeros((3, 8), np.float32), np.zeros(1, np.int64)))  # wrong shape
    answers = run_requests(art, reqs)
    assert isinstance(answers[3], ValueError) and "expected" in str(answers[3])
    for req, got in zip(reqs[:3] + reqs[4:], answers[:3] + answers[4:]):
        want = art.run(*req)
        assert got[1] is want[1] and np.array_equal(got[0], want[0])
    assert {a[1] for a in answers if not isinstance(a, Exception)} == {True, False}


def test_answer_batch_keeps_order_and_paths_per_request(art):
    items = [(_inputs(s), s % 3 == 0) for s in range(6)]
    answers = answer_batch(art, items)
    for (req, want_path), got in zip(items, answers):
        want = art.run(*req, return_path=want_path)
        if want_path:
            assert got[1] == want[1] and np.array_equal(got[0][0], want[0][0])
        else:
            assert np.array_equal(got[0], want[0])
    assert len({tuple(a[1]) for a in answers[::3]}) == 2  # both arms, by path


def test_run_requests_uses_runtime_batching(art, monkeypatch):
    reqs = [_inputs(s) for s in range(3)]
    for a, r in zip(run_requests(art, reqs), reqs):  # the real run_batch
        assert np.array_equal(a[0], art.run(*r)[0])
    calls = []

    def refuses(a, requests, return_path=False, errors="raise"):
        calls.append(errors)
        raise ValueError("batch refused")

    monkeypatch.setattr(runner, "run_batch", refuses)
    for a, r in zip(run_requests(art, reqs), reqs):  # answered one at a time instead
        assert np.array_equal(a[0], art.run(*r)[0])

    def errors_in_place(a, requests, return_path=False, errors="raise"):
        calls.append(errors)
        return [ValueError("bad") if r[0].shape[0] != 2 else a.run(*r) for r in requests]

    monkeypatch.setattr(runner, "run_batch", errors_in_place)
    bad = (np.zeros((3, 8), np.float32), reqs[0][1])
    answers = run_requests(art, [reqs[0], bad, reqs[1]])
    assert calls == ["return", "return"] and isinstance(answers[1], ValueError)
    assert np.array_equal(answers[2][0], art.run(*reqs[1])[0])


# -- configuration -------------------------------------------------------------------------
def test_serve_config_validates(art, tmp_path):
    cfg = ServeConfig(art.path, replicas=2, max_batch=4)
    assert cfg.max_ongoing() == 64 and cfg.artifact.is_absolute()
    assert ServeConfig(art.path, max_batch=64, max_ongoing_requests=8).max_ongoing() == 128
    for bad in ({"replicas": 0}, {"max_batch": 0}, {"batch_wait_ms": -1}, {"threads": 0},
                {"max_ongoing_requests": 0}):
        with pytest.raises(ValueError):
            ServeConfig(art.path, **bad)
    with pytest.raises(ValueError, match="not a dycomp artifact"):
        ServeConfig(tmp_path)


def test_cli_serve_refuses_bad_flags_with_usage_errors(art, tmp_path, capsys):
    assert main(["serve", str(art.path), "--replicas", "0"]) == 2
    assert "replicas must be an int >= 1" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a dycomp artifact" in capsys.readouterr().err
    assert main(["serve", "--help"]) == 0
    assert "--max-batch" in capsys.readouterr().out


# -- the replica's HTTP handler, called in-process (Ray installed, no cluster started) ------
def _http(method: str, body: bytes = b"", ctype: str = JSON, query: bytes = b"",
          path: str = "/", length: int | None = None):
    from starlette.requests import Request

    headers = [(b"content-type", ctype.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": headers}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return Request(scope, receive)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_handler_answers_and_refuses_with_status_codes(art, monkeypatch):
    pytest.importorskip("ray.serve")
    import asyncio

    from dycomp.serve.deployment import DycompModel

    model = DycompModel(ServeConfig(art.path, max_batch=1, max_body_bytes=1 << 14))
    x, k = _inputs(4)
    (y, flag), path = art.run(x, k, return_path=True)

    def call(*a, **kw):
        r = asyncio.run(model(_http(*a, **kw)))
        return r.status_code, r.body

    status, body = call("POST", json.dumps([x.tolist(), k.tolist()]).encode(), query=b"path=1")
    doc = json.loads(body)
    assert status == 200 and doc["path"] == list(path) and doc["outputs"][1] is flag
    status, body = call("POST", _npz(x=x, k=k), "application/x-npz")
    assert status == 200 and protocol.read_npz_answer(body)["out_0"].tobytes() == y.tobytes()
    status, body = call("POST", b"[1]")
    assert status == 400 and json.loads(body)["expected"] == str(art.signature)
    assert call("POST", b"[]", length=1 << 20)[0] == 413  # refused before reading the body
    assert call("GET")[0] == 405
    info = json.loads(call("GET", path="/-/info")[1])
    assert info["signature"] == str(art.signature) and info["max_batch"] == 1
    assert np.array_equal(asyncio.run(model.infer(x, k))[0], y)
    with pytest.raises(ValueError, match="expected"):
        asyncio.run(model.infer(x))

    def fail(*a, **kw):
        raise runtime.ModelError("mymodel", "Refused", ("too dark",))

    monkeypatch.setattr(model.art, "run", fail)
    status, body = call("POST", json.dumps([x.tolist(), k.tolist()]).encode())
    assert status == 422 and json.loads(body) == {
        "error": "ModelError: mymodel.Refused: too dark"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_health_check_fails_while_a_model_call_is_stuck(art, monkeypatch):
    pytest.importorskip("ray.serve")
    import asyncio
    import threading

    from dycomp.serve.deployment import DycompModel

    model = DycompModel(ServeConfig(art.path, max_batch=1, stuck_after_s=0.05))
    model.check_health()  # idle: healthy
    release, entered = threading.Event(), threading.Event()
    run = model.art.run

    def hang(*a, **kw):
        entered.set()
        release.wait(5)
        return run(*a, **kw)

    monkeypatch.setattr(model.art, "run", hang)

    async def scenario():
        task = asyncio.create_task(model.infer(*_inputs(4)))
        await asyncio.to_thread(entered.wait, 5)
        model.check_health()  # running, but not yet for 0.05 s
        await asyncio.sleep(0.1)
        with pytest.raises(RuntimeError, match="has run for"):
            model.check_health()
        release.set()
        await task
        model.check_health()  # answered: healthy again

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="stuck_after_s"):
        ServeConfig(art.path, stuck_after_s=0)


# -- end to end on Ray Serve (loopback) ----------------------------------------------------
@pytest.fixture(scope="module")
def server(art, tmp_path_factory):
    """`dycomp serve` in a subprocess (its own local Ray); stopped by SIGTERM, which must
    shut it down gracefully: exit status 0 and `stopped` printed."""
    pytest.importorskip("ray.serve")
    log = tmp_path_factory.mktemp("serve_log") / "out.txt"
    argv = [sys.executable, "-m", "dycomp", "serve", str(art.path), "--port", str(PORT),
            "--max-batch", "4", "--batch-wait-ms", "5", "--replica-cpus", "0.5",
            "--max-body-mb", "0.0625"]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while "serving" not in log.read_text() and proc.poll() is None:
            assert time.time() < deadline, log.read_text()
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()
        yield f"http://127.0.0.1:{PORT}/"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0 and "stopped" in log.read_text(), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def _post(url: str, body: bytes, ctype: str = JSON):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_served_answers_equal_the_artifact_and_errors_are_json(art, server):
    reqs = [_inputs(s) for s in range(12)]

    def ask(i):
        body = json.dumps({"inputs": {"x": reqs[i][0].tolist(), "k": reqs[i][1].tolist()}})
        return _post(server + ("?path=1" if i % 2 else ""), body.encode())

    with ThreadPoolExecutor(6) as pool:  # concurrent: the replica batches them
        answers = list(pool.map(ask, range(len(reqs))))
    for i, (status, body) in enumerate(answers):
        (y, flag), path = art.run(*reqs[i], return_path=True)
        doc = json.loads(body)
        assert status == 200 and doc["outputs"][1] is flag
        assert np.asarray(doc["outputs"][0], np.float32).tobytes() == y.tobytes()
        assert doc.get("path") == (list(path) if i % 2 else None)
    status, body = _post(server, _npz(x=reqs[0][0], k=reqs[0][1]), NPZ)
    assert status == 200
    assert np.array_equal(protocol.read_npz_answer(body)["out_0"], art.run(*reqs[0])[0])
    status, body = _post(server, json.dumps([[1, 2], [0]]).encode())
    assert status == 400 and json.loads(body) == {
        "error": "input x has shape [2]; expected (x: float32[2, 8], k: int64[1])",
        "expected": "(x: float32[2, 8], k: int64[1])"}
    assert _post(server, b"[" * 70000)[0] == 413
    with urllib.request.urlopen(server + "-/healthz", timeout=30) as r:
        assert r.status == 200
    with urllib.request.urlopen(server + "-/info", timeout=30) as r:
        info = json.loads(r.read())
    assert info["torch"] is False and info["max_batch"] == 4  # the replica never imports torch


def test_serving_modules_never_import_torch():
    """What a replica imports (the deployment where Ray is installed) leaves torch out."""
    mods = ["dycomp.serve", "dycomp.serve.protocol", "dycomp.serve.runner",
            "dycomp.serve.app", "dycomp.serve.config"]
    if importlib.util.find_spec("ray") is not None:
        mods.append("dycomp.serve.deployment")
    code = (f"import sys\nfor m in {mods!r}: __import__(m)\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
