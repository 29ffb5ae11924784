"""Fused control flow stays visible (issue #24 item 6): after branches and loops are lowered
into ONNX `If` / `Loop`, explain, the compile summary and `dycomp inspect` still count and
show every branch and loop of the source, each marked with where it runs, and bench labels
paths by their decisions."""

from __future__ import annotations

import importlib
import json
import re
import shutil

import numpy as np
import pytest
import torch

import dycomp
from dycomp.check import variants
from dycomp.cli import main
from dycomp.ir.program import If, Loop, walk
from dycomp.runtime.artifact import ArtifactError

ZOO = ["multi_exit", "act", "decoder", "gated_resnet", "nested_if", "moe"]


@pytest.fixture(scope="module", params=ZOO)
def compiled(request, tmp_path_factory):
    """(name, CompiledModel, pre-fusion graph, saved artifact, example inputs)."""
    torch.manual_seed(0)
    model, ex = importlib.import_module(f"examples.zoo.{request.param}").make()
    cm = dycomp.compile(model, ex, backend="onnx", check=False)
    path = cm.save(tmp_path_factory.mktemp(request.param) / "net.dyc")
    return request.param, cm, cm.executor.before_fusion, path, ex


def _source_counts(before) -> tuple[int, int]:
    stmts = list(walk(before.body))
    return sum(isinstance(s, If) for s in stmts), sum(isinstance(s, Loop) for s in stmts)


def _shown(text: str) -> tuple[int, int]:
    """(branches, loops) as the header line 'N branches (...), M loops (...)' says."""
    m = re.search(r"(\d+) branch(?:es)? .*?(\d+) loops?\b", text)
    assert m, text
    return int(m[1]), int(m[2])


def _marked(text: str) -> tuple[int, int]:
    """The branches and loops the view lists, each with where it runs."""
    ifs = re.findall(r"^\s*if .*\[.*\]  (host|in f\d+ as If)$", text, re.M)
    loops = re.findall(r"^\s*loop .*\[.*\]  (host|in f\d+ as Loop)$", text, re.M)
    return len(ifs), len(loops)


def test_fusion_happened_and_explain_counts_the_source(compiled):
    name, cm, before, _, _ = compiled
    assert before is not None, f"{name}: nothing was fused, so this test proves nothing"
    assert cm.graph.stats()["branches"] + cm.graph.stats()["loops"] < sum(
        _source_counts(before)), "the host program alone still shows every branch"
    text = cm.explain()
    assert _shown(text) == _source_counts(before)
    assert _marked(text) == _source_counts(before)
    fused = {n for n, r in cm.graph.regions.items() if r.fused}
    assert fused and all(f"in {n} as" in text for n in fused)


def test_inspect_of_the_saved_artifact_shows_the_same(compiled, capsys):
    name, cm, before, path, _ = compiled
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert _shown(out) == _source_counts(before)
    assert _marked(out) == _source_counts(before)
    assert "0 branches, 0 loops" not in out
    rt = dycomp.runtime.load(path)
    assert _marked(rt.explain()) == _source_counts(before)


def test_path_regions_are_listed_with_their_lines(compiled):
    name, cm, _, _, ex = compiled
    view = cm.control_view()
    for args, _ in variants(ex, {}, n=8):
        _, path = cm.run(*args, return_path=True)
        for region in path:
            assert view.regions.get(region), f"{name}: {region} not shown with a line"
            assert all(re.match(r".+\.py:\d+$", ln) for ln in view.regions[region])


EXPECTED = {"multi_exit": r"^exit \d$", "decoder": r"^\d+ steps?$",
            "gated_resnet": r"^skipped ([\d,-]+|none) of 18 ", "moe": r"^option \d,\d$",
            "act": r"^halting.item\(\) > 1 - self.eps: (yes|no, \d+ steps?)$"}


def test_path_labels_tell_paths_apart(compiled):
    """Different region paths get different labels, named by decisions, not regions."""
    name, cm, _, _, ex = compiled
    view, labels = cm.control_view(), {}
    for args, _ in variants(ex, {}, n=24):
        path = tuple(cm.run(*args, return_path=True)[1])
        labels.setdefault(view.label(list(path)), set()).add(path)
    assert len(labels) > 1, f"{name}: one path only; the test needs several"
    for label, paths in labels.items():
        assert not re.search(r"\b[rf]\d+\b", label), label  # no internal region names
        assert len(paths) == 1, (label, paths)
        assert re.match(EXPECTED.get(name, ""), label), label


def test_compile_summary_counts_where_they_run(tmp_path, capsys):
    assert main(["compile", "examples/zoo/act.py:make", "--no-check", "-o",
                 str(tmp_path / "a.dyc")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"branches[│ ]+3 branches \(3 fused into f1\)", out), out
    assert re.search(r"loops[│ ]+1 loop \(1 fused into f1\)", out), out


def test_unfused_model_marks_everything_host():
    model, ex = importlib.import_module("examples.zoo.act").make()
    cm = dycomp.compile(model, ex, backend="onnx", check=False, fuse_branches=False)
    text = cm.explain()
    assert "fused into" not in text and "3 branches (host), 1 loop (host)" in text


@pytest.fixture(scope="module")
def decoder_artifact(tmp_path_factory):
    model, ex = importlib.import_module("examples.zoo.decoder").make()
    cm = dycomp.compile(model, ex, backend="onnx", check=False)
    return cm.save(tmp_path_factory.mktemp("decoder") / "d.dyc")


@pytest.mark.parametrize("edit", [
    lambda f: f.update({"nope": {"outline": [], "regions": {}}}),
    lambda f: f["f1"]["outline"].append({"kind": "exec", "line": "x.py:1"}),
    lambda f: f["f1"]["outline"].append({"kind": ["if"]}),
    lambda f: f["f1"]["outline"].append({"kind": "call", "region": "../x"}),
    lambda f: f["f1"]["outline"].append({"kind": "if", "then": [], "orelse": {}}),
    lambda f: f["f1"]["outline"].append({"kind": "call", "region": "r0", "code": "1"}),
    lambda f: f["f1"].update({"regions": {"r0": "a.py:1"}}),
    lambda f: f.update({"f1": []}),
])
def test_malformed_fused_table_is_refused(decoder_artifact, tmp_path, edit):
    path = shutil.copytree(decoder_artifact, tmp_path / "d.dyc")
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    edit(manifest["fused"])
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="fused"):
        dycomp.runtime.load(path)


def test_bench_chart_labels_fused_paths_by_decisions():
    from dycomp.benchmark import bench

    torch.manual_seed(0)
    model, ex = importlib.import_module("examples.zoo.decoder").make()
    inputs = [a for a, _ in variants(ex, {}, n=12)]
    result = bench(model, inputs, backends=("onnx",), runs=1)
    labels = list(result.contenders[0].per_path)
    assert len(labels) > 1 and all(re.match(r"^\d+ steps?$", lb) for lb in labels), labels
    assert sum(result.paths.values()) == len(inputs)


def test_run_show_path_names_the_decisions(decoder_artifact, tmp_path, capsys):
    x = tmp_path / "x.npy"
    model, ex = importlib.import_module("examples.zoo.decoder").make()
    np.save(x, ex[0].numpy())
    assert main(["run", str(decoder_artifact), "--input", str(x), "--show-path"]) == 0
    out = capsys.readouterr().out
    steps = re.search(r"path: .*\((\d+) regions?\)", out)
    assert steps and re.search(rf"decisions: {int(steps[1]) - 1} steps?\b", out), out


def test_skipped_blocks_read_as_ranges():
    from dycomp.runtime.pathlabels import _ranges

    assert _ranges([1, 2, 3, 5, 7, 8]) == "1-3,5,7,8" and _ranges([]) == ""


def test_chart_labels_keep_both_ends_and_stay_distinct():
    from dycomp.benchmark.html import _middle, _unique

    a = "s > self.cfg.upper: yes, h[0, 0] > 0: yes, x.std() > self.cfg.std_threshold: no"
    b = a[:-2] + "yes"
    assert len(_middle(a)) <= 64 and _middle(a) != _middle(b)
    assert _middle(a).endswith("no") and _middle("5 steps") == "5 steps"
    assert _unique("x", ["x", "x #2"]) == "x #3"
