"""`dycomp.runtime.batching.run_batch`: batched answers equal one-at-a-time answers
(outputs and paths) on every zoo example and on small models whose host program loops,
breaks, continues and raises. 200 requests per zoo example here (random batch sizes 1-8);
`python benchmarks/batching_exact.py` runs 1,000."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
import dycomp.runtime as rt
from dycomp.runtime import batch_rows, batch_split
from dycomp.runtime.artifact import Signature, TensorSpec
from dycomp.runtime.batch_rows import call_variant
from dycomp.runtime.batching import plan, run_batch
from examples.zoo import ZOO
from tests.batching_zoo import batched_vs_single, requests, same, zoo_artifact


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_batched_equals_single(name):
    _, art = zoo_artifact(name)
    bad, paths, batches = batched_vs_single(art, requests(name, 200))
    assert not bad, f"{name}: requests {bad[:5]} differ"
    expected = ZOO[name].PATHS
    assert paths >= min(len(expected) if isinstance(expected, set) else expected, 4)
    assert batches > 40


@pytest.mark.parametrize("name", ["multi_exit", "act", "gated_resnet", "policy_net"])
def test_split_at_host_decisions(name, monkeypatch):
    """Unfused, the decisions are the host's: groups really split (some region call gets
    part of its batch, several samples at once), and answers still equal."""
    _, art = zoo_artifact(name, fuse=False)
    assert plan(art)[0] == "split"
    calls: list[int] = []

    def spy(program, region, rows, paths):
        calls.append(len(rows))
        return batch_split.call_each(program, region, rows, paths)

    def spy_variant(variant, program, region, rows, paths, stats=None):  # rows variants
        calls.append(len(rows))
        return call_variant(variant, program, region, rows, paths, stats)

    monkeypatch.setattr(batch_split, "CALL_GROUP", spy)
    monkeypatch.setattr(batch_rows, "call_variant", spy_variant)
    reqs = requests(name, 200, seed=1)
    parts = 0
    for i in range(0, 64, 8):
        calls.clear()
        run_batch(art, reqs[i:i + 8])
        parts += any(1 < n < 8 for n in calls)  # a part of the batch, still a group
    assert parts > 0
    bad, paths, _ = batched_vs_single(art, reqs, seed=1)
    assert not bad and paths > 1


class Looping(nn.Module):
    """A `for` loop with `continue` and `break` on data, and a `raise` on one path."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        total = 0
        for i in range(5):
            x = torch.tanh(self.fc(x))
            if x.sum() > 1.0:
                continue
            total += i
            if x.mean() < -0.2:
                break
        if x.abs().max() > 0.995:
            raise ValueError("saturated")
        return x * total, total


def _looping_artifact(tmp_path):
    torch.manual_seed(0)
    model = Looping().eval()
    cm = dycomp.compile(model, (torch.randn(1, 4),), backend="onnx", check=False,
                        fuse_branches=False, optimize=False, batch_variants=True)
    return rt.load(cm.save(tmp_path / "loop.dyc"))


def _single(art, r):
    try:
        return art.run(*r, return_path=True)
    except Exception as e:
        return e


def test_loops_breaks_and_raises(tmp_path):
    art = _looping_artifact(tmp_path)
    assert art.batching["class"] == "path-split"
    g = np.random.default_rng(0)
    reqs = [(g.normal(size=(1, 4)).astype(np.float32) * s,) for s in [0.1, 1, 3, 30] * 25]
    single = [_single(art, r) for r in reqs]
    batched = run_batch(art, reqs, return_path=True, errors="return")
    errors = [i for i, s in enumerate(single) if isinstance(s, Exception)]
    assert errors and len(errors) < len(reqs)  # both kinds of answer are covered
    assert len({s[1] for s in single if not isinstance(s, Exception)}) > 2
    for s, b in zip(single, batched):
        if isinstance(s, Exception):
            assert type(b) is type(s) and str(b) == str(s)
        else:
            assert same(s[0], b[0]) and s[1] == b[1]
    with pytest.raises(ValueError, match="saturated"):
        run_batch(art, [reqs[i] for i in (errors[0], 0)])


def test_bad_request_fails_alone(tmp_path):
    art = _looping_artifact(tmp_path)
    good = (np.zeros((1, 4), np.float32),)
    out = run_batch(art, [good, (np.zeros((2, 4), np.float32),), good], errors="return")
    assert isinstance(out[1], ValueError) and "expected" in str(out[1])
    assert same(out[0], art.run(*good)) and same(out[2], art.run(*good))
    assert run_batch(art, []) == []


class _RowsArtifact:
    """A stand-in for an artifact compiled with a dynamic batch dim (not in this branch):
    per-sample class, `x: float32[batch, 3]`, output (2 x, x.sum(1))."""

    manifest = {"batching": {"class": "per-sample", "reasons": [], "decisions": [],
                             "regions": {}, "subgraphs": {}}}
    signature = Signature((TensorSpec("x", np.dtype("float32"), ("batch", 3)),))

    class program:
        data = {"params": ["x"], "body": []}

    calls = 0

    def run(self, x, return_path=False):
        self.calls += 1
        out = (2 * x, {"s": x.sum(1)})
        return (out, ("r0",)) if return_path else out


def test_per_sample_concatenates_once():
    art = _RowsArtifact()
    reqs = [(np.full((n, 3), n, np.float32),) for n in (1, 2, 1)]
    assert plan(art)[0] == "concat"
    out = run_batch(art, reqs, return_path=True)
    assert art.calls == 1
    for r, (value, path) in zip(reqs, out):
        assert same(value, art.run(*r)) and path == ("r0",)


class _Executor:
    """Regions in numpy, row-wise: r0 (2x, row sum > 0), r1 (x - 1,)."""

    def __init__(self):
        self.rows: list[int] = []

    def __call__(self, region, x):
        self.rows.append(x.shape[0])
        if region == "r0":
            return 2 * x, x.sum(1) > 0
        return (x - 1,)


def _dynamic_split_artifact():
    """A stand-in for a path-split artifact compiled with a dynamic batch dim:
    `y, c = r0(x); if bool(c): return y; (z,) = r1(y); return z`."""
    from dycomp.runtime.host import HostProgram

    data = {"params": ["x"], "body": [
        {"kind": "call", "region": "r0", "args": ["x"], "outs": ["y", "c"]},
        {"kind": "op", "out": "b", "expr": {"op": "bool", "args": [{"var": "c"}]}},
        {"kind": "if", "cond": "b", "source": "c", "then": [
            {"kind": "return", "value": {"var": "y"}}], "orelse": [
            {"kind": "call", "region": "r1", "args": ["y"], "outs": ["z"]},
            {"kind": "return", "value": {"var": "z"}}]}]}

    class Art:
        manifest = {"batching": {"class": "path-split", "reasons": [], "decisions": [],
                                 "regions": {}, "subgraphs": {
                                     "r0": {"batched": True, "reason": ""},
                                     "r1": {"batched": True, "reason": ""}}}}
        signature = Signature((TensorSpec("x", np.dtype("float32"), ("batch", 3)),))
        program = HostProgram.from_data(data, _Executor())

        def run(self, x, return_path=False):
            return (self.program.run_path if return_path else self.program.run)(x)

    return Art()


def test_split_with_batched_region_calls():
    """With a dynamic dim 0, each group's region call is one call over its rows."""
    art = _dynamic_split_artifact()
    g = np.random.default_rng(0)
    reqs = [(g.normal(size=(1, 3)).astype(np.float32),) for _ in range(8)]
    single = [art.run(*r, return_path=True) for r in reqs]
    taken = sum(len(p) == 1 for _, p in single)
    assert 0 < taken < 8  # both arms
    art.program.executor.rows.clear()
    batched = run_batch(art, reqs, return_path=True)
    assert art.program.executor.rows == [8, 8 - taken]  # r0 once for all, r1 for the rest
    for s, b in zip(single, batched):
        assert same(s[0], b[0]) and s[1] == b[1]


def test_call_rows_buckets_and_falls_back():
    """Samples whose other arguments differ are not joined; an output that is not split
    by rows, or a failing call, runs each sample alone."""
    class Program:
        executor = None
        calls: list = []

        def _call(self, region, x, k):
            self.calls.append(x.shape[0])
            if region == "sum":
                return (x.sum(),)
            if k < 0:
                raise ValueError("negative")
            return (x * k,)

    p = Program()
    rows = [(np.ones((1, 2), np.float32), 2.0), (np.ones((2, 2), np.float32), 2.0),
            (np.ones((1, 2), np.float32), 3.0)]
    out = batch_split.call_rows(p, "mul", rows, False)
    assert sorted(p.calls) == [1, 3]
    for (x, k), (values, ran) in zip(rows, out):
        assert same(values[0], x * k) and ran == ["mul"]
    p.calls.clear()
    out = batch_split.call_rows(p, "sum", rows[:2], False)
    assert p.calls == [3, 1, 2] and [v[0][0] for v in out] == [2.0, 4.0]
    out = batch_split.call_rows(p, "mul", [(np.ones((1, 2), np.float32), -1.0)] * 2, False)
    assert all(isinstance(e, ValueError) for e in out)
