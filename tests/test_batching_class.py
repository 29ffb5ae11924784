"""Batching classes (`dycomp/batching.py`): per-sample, path-split or unbatchable, with the
source lines that decide it, for every zoo example and for small models of each class;
stored in the manifest, checked on load, shown by `inspect`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import dycomp
import dycomp.runtime as rt
from dycomp.runtime.batching import batching_of, plan
from tests.batching_zoo import zoo_artifact

# class, a line the first reason names (decision or region), and for coupled decisions the
# line of the value it reads. Classified on the onnx pipeline with its default passes.
ZOO_CLASSES = {
    "multi_exit": ("path-split", "multi_exit.py:90", "multi_exit.py:89"),
    "gated_resnet": ("path-split", "gated_resnet.py:43", "gated_resnet.py:43"),
    "policy_net": ("path-split", "policy_net.py:80", "policy_net.py:80"),
    "moe": ("unbatchable", "moe.py:52", "moe.py:52"),  # probs[0, idx] scales the rows
    "decoder": ("unbatchable", "decoder.py:59", "hidden state has the batch in dim 1"),
    "act": ("path-split", "act.py:52", "act.py:52"),
    "nested_if": ("unbatchable", "nested_if.py:65", "where"),  # torch.where on a scalar
    "static_resnet": ("per-sample", "every region is row-wise", ""),
    "gated54": ("path-split", "gated54.py:47", "gated54.py:47"),
    "gated_mul": ("path-split", "gated_mul.py:51", "gate-to-branch"),  # the pass adds ifs
}


@pytest.mark.parametrize("name", list(ZOO_CLASSES))
def test_zoo_class(name):
    kind, line, origin = ZOO_CLASSES[name]
    cm, art = zoo_artifact(name)
    b = cm.batching
    assert b.kind == kind, str(b)
    assert line in b.reasons[0] and origin in b.reasons[0], b.reasons
    assert art.batching["class"] == kind  # saved and loaded
    coupled = [d for d in b.decisions if d["coupled"]]
    assert bool(coupled) == (kind == "path-split" or bool(coupled)), b.decisions
    if kind == "per-sample":
        assert not coupled and all(r["rowwise"] for r in b.regions.values())
    if kind == "unbatchable":
        assert any(not r["rowwise"] for r in b.regions.values())
        assert plan(art)[0] == "one"
    if kind == "path-split":
        assert all(r["rowwise"] for r in b.regions.values())
        on_host = any(d["where"] == "host" for d in coupled)
        assert plan(art)[0] == ("split" if on_host else "one")  # fused: no split possible
    for d in coupled:  # where each decision runs: the host, or fused into a subgraph
        assert d["where"] == "host" or not art.batching["subgraphs"][d["where"]]["batched"]
    if name == "multi_exit":  # its exits are fused into f1's If nodes: no batched call
        assert {d["where"] for d in coupled} == {"f1"}
        assert "fused into it" in art.batching["subgraphs"]["f1"]["reason"]


def test_gated_mul_as_written_is_per_sample():
    """Gates multiplied in per row are per-sample; gate-to-branch turns them into host
    decisions, which the default pipeline classifies path-split (above)."""
    from examples.zoo import gated_mul

    model, ex = gated_mul.make()
    cm = dycomp.compile(model, ex, backend="torch", check=False, optimize=False)
    assert cm.batching.kind == "per-sample", str(cm.batching)


class RowWise(nn.Module):
    """Linear + norm + a per-row mask with torch.where: no decision at all."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm = nn.Linear(8, 8), nn.LayerNorm(8)

    def forward(self, x):
        h = self.norm(self.fc(x))
        return torch.where(h.sum(-1, keepdim=True) > 0, h, -h).flatten(1)


class Coupled(nn.Module):
    """`if x.max() > 0`: a scalar over the whole tensor decides."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        if x.max() > 0.5:
            return self.a(x)
        return self.b(x)


class MixesRows(nn.Module):
    """`x - x.mean()`: every row reads the whole tensor."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x - x.mean())


class Flattens(nn.Module):
    """`x.reshape(-1)`: the batch dim goes into the features."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x.reshape(-1))


class GruState(nn.Module):
    """A batch_first GRU's final state `h` is [layers, batch, hidden]: batch in dim 1."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 4, batch_first=True)

    def forward(self, x):
        out, h = self.gru(x.unsqueeze(1))
        return h * 2


class GruOutput(nn.Module):
    """The same GRU's per-step output is [batch, steps, hidden]: rows."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 4, batch_first=True)

    def forward(self, x):
        out, _ = self.gru(x.unsqueeze(1))
        return out * 2


def _at(text: str) -> str:
    """`test_batching_class.py:N`, N the line of this file that holds `text`."""
    lines = Path(__file__).read_text().splitlines()
    return f"{Path(__file__).name}:{1 + next(i for i, ln in enumerate(lines) if text in ln)}"


@pytest.mark.parametrize("model, kind, reason", [
    (RowWise(), "per-sample", "every region is row-wise"),
    (Coupled(), "path-split", f"{_at('if x.max() > 0.5:')}: `x.max() > 0.5` reads "
                              f"{_at('if x.max() > 0.5:')}: max_1 (max)"),
    (MixesRows(), "unbatchable", f"{_at('return self.fc(x - x.mean())')}: sub"),
    (Flattens(), "unbatchable", "reshapes [1, 8] to [8], across dim 0"),
    (GruState(), "unbatchable", "final hidden state has the batch in dim 1"),
    (GruOutput(), "per-sample", "every region is row-wise"),
])
def test_small_model_class(model, kind, reason):
    cm = dycomp.compile(model.eval(), (torch.randn(1, 8),), check=False, optimize=False)
    assert cm.batching.kind == kind, str(cm.batching)
    assert any(reason in r for r in cm.batching.reasons), cm.batching.reasons


def test_manifest_field_checked_and_shown(tmp_path, capsys):
    cm = dycomp.compile(Coupled().eval(), (torch.randn(1, 8),), backend="onnx", check=False,
                        fuse_branches=False, optimize=False)
    path = cm.save(tmp_path / "c.dyc")
    assert dycomp.load(path).batching.kind == "path-split"
    assert "batching: path-split (1 of 1 decisions batch-coupled)" in rt.load(path).explain()
    from dycomp.cli import main

    assert main(["inspect", str(path)]) in (0, None)
    assert "batching: path-split" in capsys.readouterr().out
    manifest = json.loads((path / "manifest.json").read_text())
    for bad, field in [({"class": "sometimes"}, "batching.class"),
                       ({**manifest["batching"], "subgraphs": {"nope": {
                           "batched": True, "reason": ""}}}, "batching.subgraphs['nope']")]:
        broken = tmp_path / "broken.dyc"
        shutil.copytree(path, broken, dirs_exist_ok=True)
        (broken / "manifest.json").write_text(json.dumps({**manifest, "batching": bad}))
        with pytest.raises(rt.ArtifactError, match=field.replace("[", r"\[")):
            rt.load(broken)
    old = {k: v for k, v in manifest.items() if k != "batching"}  # saved before batching
    (broken / "manifest.json").write_text(json.dumps(old))
    assert batching_of(rt.load(broken))["class"] == "unbatchable"
    assert plan(rt.load(broken))[0] == "one"
