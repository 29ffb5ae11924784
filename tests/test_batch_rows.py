"""Rows variants (`dycomp/batching_variant.py`, `runtime/batch_rows.py`): a batch-coupled
model's regions run once per group of samples, and every answer still equals the batch-1
answer. Small models of each kind: a multi-exit CNN (`if p.max() > t`), a gate read with
`.item()`, a loop that halts per sample on a reduction; and regions that mix rows (a
BatchNorm in training mode, `x.sum(0)`) or put the batch elsewhere, which get none."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import fx, nn

import dycomp
import dycomp.runtime as rt
from dycomp.batching_rows import ROWS, State
from dycomp.batching_variant import NoVariant, build_variant, check_torch, references, sample_rows
from dycomp.runtime.batching import plan, run_batch
from dycomp.runtime.errors import ArtifactError
from tests.batching_zoo import same


class MultiExit(nn.Module):
    """Two exits: the first when its softmax is confident, per sample."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head1 = nn.Linear(4, 5)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head2 = nn.Linear(4, 5)

    def forward(self, x):
        x = self.stem(x)
        logits = self.head1(x.mean((2, 3)))
        p = torch.softmax(logits, -1)
        if p.max() > 0.3:
            return logits
        x = self.block(x)
        return self.head2(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ItemGate(nn.Module):
    """A gate read on the host with `.item()`: the block runs where it is open."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(6, 1)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        g = torch.sigmoid(self.gate(x)).sum()
        if g.item() > 0.5:
            x = x + self.block(x)
        return self.out(x) * 2


class Halting(nn.Module):
    """A loop that stops per sample when its state's mean magnitude falls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, h):
        steps = 0
        for _ in range(6):
            h = torch.tanh(self.fc(h)) * 0.8
            steps += 1
            if h.abs().mean() < 0.12:
                break
        return h, steps


def _artifact(model, example, tmp_path, name):
    torch.manual_seed(0)
    cm = dycomp.compile(model.eval(), (example,), backend="onnx", check=False,
                        fuse_branches=False, optimize=False,  # decisions stay on the host
                        batch_variants=True)
    return cm, rt.load(cm.save(tmp_path / f"{name}.dyc"))


def _requests(shape, n, seed, scales=(0.3, 1.0, 3.0)):
    g = np.random.default_rng(seed)
    return [(g.normal(size=shape).astype(np.float32) * scales[i % len(scales)],)
            for i in range(n)]


def _expected_calls(paths: list[list[str]]) -> Counter:
    """Per (region, k-th call), how many samples of the batch make it: the groups the
    splitter forms, each one batched call (two or more samples) or one single call."""
    return Counter((r, k) for p in paths for r, k in
                   {(r, p[:i].count(r)) for i, r in enumerate(p)})


def _check(art, reqs, batch=8, min_paths=2):
    """Batched answers equal one-at-a-time answers; the call counts are those the paths
    imply; returns the stats of all batches."""
    single = [art.run(*r, return_path=True) for r in reqs]
    assert len({tuple(s[1]) for s in single}) >= min_paths  # every path is covered
    total: dict = {}
    for i in range(0, len(reqs), batch):
        stats: dict = {}
        got = run_batch(art, reqs[i:i + batch], return_path=True, stats=stats)
        for s, b in zip(single[i:i + batch], got):
            assert same(s[0], b[0]) and s[1] == b[1]
        groups = _expected_calls([list(s[1]) for s in single[i:i + batch]])
        assert stats.get("batched_calls", 0) == sum(n > 1 for n in groups.values())
        assert stats.get("batched_samples", 0) == sum(n for n in groups.values() if n > 1)
        assert stats.get("single_calls", 0) == sum(n == 1 for n in groups.values())
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v
    return total


def _variants(art) -> dict:
    return {n: e["rows_variant"] for n, e in art.batching["subgraphs"].items()
            if "rows_variant" in e}


def test_multi_exit_rows_variants(tmp_path):
    torch.manual_seed(0)
    cm, art = _artifact(MultiExit(), torch.randn(1, 3, 8, 8), tmp_path, "exit")
    assert art.batching["class"] == "path-split" and plan(art)[0] == "split"
    variants = _variants(art)
    assert set(variants) == set(art.subgraphs)  # every region, the exit's included
    assert any(v["outputs"].count("scalar") for v in variants.values())
    stats = _check(art, _requests((1, 3, 8, 8), 96, seed=1))
    assert stats["batched_calls"] >= 12 and stats["batched_samples"] > 96


def test_item_gate_rows_variants(tmp_path):
    torch.manual_seed(1)
    cm, art = _artifact(ItemGate(), torch.randn(1, 6), tmp_path, "gate")
    assert art.batching["class"] == "path-split"
    variants = _variants(art)
    assert variants and all(v["inputs"] == ["rows"] * len(v["inputs"])
                            for v in variants.values())
    stats = _check(art, _requests((1, 6), 120, seed=2))
    assert stats["batched_calls"] > 0


def test_halting_loop_rows_variants(tmp_path):
    torch.manual_seed(2)
    cm, art = _artifact(Halting(), torch.randn(1, 6), tmp_path, "halt")
    assert _variants(art)
    stats = _check(art, _requests((1, 6), 120, seed=3, scales=(0.1, 0.5, 2.0)), min_paths=3)
    assert stats["batched_calls"] > 0


class TrainBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        y = self.bn(x)
        if y.max() > 0.5:
            return y * 2
        return y


class SumRows(nn.Module):
    def forward(self, x):
        s = x.sum(0)
        if s.max() > 0:
            return torch.tanh(x) + 1
        return x


def test_no_variant_where_rows_mix(tmp_path):
    torch.manual_seed(0)
    bn = TrainBN().train()
    cm = dycomp.compile(bn, (torch.randn(2, 4),), backend="onnx", check=False,
                        fuse_branches=False, batch_variants=True)
    assert cm.batching.kind == "unbatchable" and not cm.batching.files
    cm, art = _artifact(SumRows(), torch.randn(1, 4), tmp_path, "sum0")
    entry = art.batching["subgraphs"]
    first = [e for e in entry.values() if "rows_variant" not in e]
    assert first and any("no rows variant" in e["reason"] for e in first)
    reqs = _requests((1, 4), 40, seed=4)  # still exact, one sample at a time there
    for r, b in zip(reqs, run_batch(art, reqs, return_path=True)):
        s = art.run(*r, return_path=True)
        assert same(s[0], b[0]) and s[1] == b[1]


def _graph(fn, example):
    """`fn` traced, each node holding its value on `example` (as the frontend records)."""
    gm = fx.symbolic_trace(fn)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if isinstance(out.args[0], fx.Node):  # regions return tuples
        out.args = ((out.args[0],),)
        gm.recompile()

    class Record(fx.Interpreter):
        def run_node(self, n):
            n.meta["example"] = super().run_node(n)
            return n.meta["example"]

    Record(gm).run(example)
    return gm


def test_check_refuses_a_variant_whose_dim0_is_not_the_sample():
    """`unsqueeze(0)` of one row keeps dim 0 of size 1 at batch 1, so the row-wise
    analysis takes it for the batch; at batch 5 it is not, and the check says so."""
    gm = _graph(lambda x: (x.unsqueeze(0) * 2).max(), torch.randn(1, 4))
    variant, kinds = build_variant(gm, [State(ROWS)])
    rows = sample_rows(gm, kinds, 5)
    with pytest.raises(NoVariant, match="dim 0 is not the sample|differs"):
        check_torch(gm, variant, kinds, rows, references(gm, rows))


@pytest.mark.parametrize("fn", [lambda x: x.sum(0), lambda x: x.max(1)[0].sum() * x,
                                lambda x: x.amax((0, 1)), lambda x: x.sum() + torch.ones(3),
                                lambda x: x.norm(1), lambda x: x.max().sum()])
def test_no_variant_for_unclear_reductions(fn):
    gm = _graph(fn, torch.randn(1, 3))
    with pytest.raises(NoVariant):
        variant, kinds = build_variant(gm, [State(ROWS)])
        rows = sample_rows(gm, kinds, 5)
        check_torch(gm, variant, kinds, rows, references(gm, rows))


@pytest.mark.parametrize("fn", [lambda x: x.max(), lambda x: x.mean() > 0.1,
                                lambda x: x.std(), lambda x: x.argmax(), lambda x: x.any(),
                                lambda x: x.norm() > 1,
                                lambda x: (x.sum() * 2 - 1).sigmoid(), lambda x: x[0, 1],
                                lambda x: x.sum(1).reshape(()), lambda x: x.view(1, 3) + 1,
                                lambda x: (x.abs().sum(), x * 3), lambda x: x.sum(1).max(),
                                lambda x: torch.reshape(x, (1, 3)).sum() * 2])
def test_per_row_forms_equal_batch_1(fn):
    gm = _graph(fn, torch.randn(1, 3))
    variant, kinds = build_variant(gm, [State(ROWS)])
    rows = sample_rows(gm, kinds, 5)
    check_torch(gm, variant, kinds, rows, references(gm, rows))  # raises if a row differs
    assert set(kinds["outputs"]) <= {"scalar", "rows"} and kinds["inputs"] == ["rows"]


def _rewrite_manifest(path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_manifest_rows_variant_checked_and_optional(tmp_path):
    """An artifact without rows variants (older) loads and answers exactly, one sample at
    a time; a malformed `rows_variant` is refused on load, a missing file on use."""
    torch.manual_seed(1)
    cm, art = _artifact(ItemGate(), torch.randn(1, 6), tmp_path, "gate")
    reqs = _requests((1, 6), 16, seed=5)
    single = [art.run(*r) for r in reqs]
    old = Path(shutil.copytree(art.path, tmp_path / "old.dyc"))
    _rewrite_manifest(old, lambda m: [e.pop("rows_variant", None)
                                      for e in m["batching"]["subgraphs"].values()])
    stats: dict = {}
    got = run_batch(rt.load(old), reqs, stats=stats)
    assert all(same(a, b) for a, b in zip(single, got)) and "batched_calls" not in stats
    bad = Path(shutil.copytree(art.path, tmp_path / "bad.dyc"))
    name = next(iter(_variants(art)))
    _rewrite_manifest(bad, lambda m: m["batching"]["subgraphs"][name]["rows_variant"].update(
        inputs=["columns"]))
    with pytest.raises(ArtifactError, match="rows_variant"):
        rt.load(bad)
    gone = Path(shutil.copytree(art.path, tmp_path / "gone.dyc"))
    _rewrite_manifest(gone, lambda m: m["batching"]["subgraphs"][name]["rows_variant"].update(
        file="subgraphs/nowhere.onnx"))
    with pytest.raises(ArtifactError, match="nowhere"):
        run_batch(rt.load(gone), reqs[:4])


class WidthGate(nn.Module):
    """A selector (`width`) and a per-sample exit: sub-networks share their weights."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, width=1.0):
        h = torch.tanh(self.fc(x)) * width
        if h.abs().mean() > 0.4:
            return self.head(h)
        return self.head(h * 2)


def test_rows_variants_in_an_artifact_with_selectors(tmp_path):
    """Saved beside the shared weights (stored once, stripped like the subgraphs) and
    restored on load: each sub-network batches exactly."""
    torch.manual_seed(3)
    cm = dycomp.compile(WidthGate().eval(), (torch.randn(1, 6),), backend="onnx",
                        check=False, fuse_branches=False, optimize=False,
                        selectors={"width": [0.5, 1.0]}, batch_variants=True)
    sel = rt.load(cm.save(tmp_path / "sel.dyc"))
    reqs = _requests((1, 6), 48, seed=6)
    for art in sel.subnets.values():
        assert _variants(art)
        stats = _check(art, reqs)
        assert stats["batched_calls"] > 0


NO_TORCH = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np
from dycomp import runtime as rt
from dycomp.runtime.batching import run_batch
art = rt.load(sys.argv[1])
xs = np.load(sys.argv[2])
stats = {}
got = run_batch(art, [(x,) for x in xs], stats=stats)
for x, g in zip(xs, got):
    assert np.allclose(np.asarray(g), np.asarray(art.run(x)), atol=1e-5)
assert stats["batched_calls"] > 0, stats
print("ok", stats["batched_calls"])
"""


def test_rows_variants_run_without_torch(tmp_path):
    torch.manual_seed(1)
    cm, art = _artifact(ItemGate(), torch.randn(1, 6), tmp_path, "gate")
    xs = np.stack([r[0] for r in _requests((1, 6), 8, seed=7)])
    np.save(tmp_path / "xs.npy", xs)
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(art.path), str(tmp_path / "xs.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr


def test_variants_must_equal_the_saved_regions(tmp_path):
    """Variants are built on save, from the FX regions: weights changed after the compile
    make them differ from the exported regions, and they are refused, not saved."""
    torch.manual_seed(1)
    model = ItemGate().eval()
    cm = dycomp.compile(model, (torch.randn(1, 6),), backend="onnx", check=False,
                        fuse_branches=False, optimize=False, batch_variants=True)
    with torch.no_grad():
        model.out.weight.add_(1.0)
    art = rt.load(cm.save(tmp_path / "changed.dyc"))
    reasons = [e["reason"] for e in art.batching["subgraphs"].values()
               if "rows_variant" not in e]
    assert any("differs from the region run on that row alone" in r for r in reasons)
    reqs = _requests((1, 6), 24, seed=8)
    for r, b in zip(reqs, run_batch(art, reqs)):
        assert same(art.run(*r), b)


def test_variants_only_when_asked_cli_too(tmp_path, capsys):
    """Rows variants are opt-in: `batch_variants=True` / `dycomp compile --batch-variants`."""
    from tests.test_cli import call

    zoo = Path(__file__).resolve().parents[1] / "examples" / "zoo"
    for flag, expected in (([], {"r0.onnx"}), (["--batch-variants"], {"r0.onnx", "r0.rows.onnx"})):
        out = tmp_path / f"sr{len(flag)}.dyc"
        code, _, err = call(capsys, "compile", f"{zoo / 'static_resnet.py'}:make", "-o", out,
                            "--no-check", *flag)
        assert code == 0 and err == ""
        assert {p.name for p in (out / "subgraphs").iterdir()} == expected
    out = tmp_path / "me.dyc"  # decisions on the host: path-split batching runs groups
    code, _, err = call(capsys, "compile", f"{zoo / 'multi_exit.py'}:make", "-o", out,
                        "--no-check", "--batch-variants", "--no-fuse-branches")
    assert code == 0 and err == ""
    art = rt.load(out)
    assert plan(art)[0] == "split"
    assert any(p.name.endswith(".rows.onnx") for p in (out / "subgraphs").iterdir())
