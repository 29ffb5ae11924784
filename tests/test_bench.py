"""dycomp.bench: fair contenders, correctness beside speed, reports (small budgets)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import dycomp
from dycomp.benchmark.stats import summarize
from dycomp.cli import main
from examples.zoo import ZOO


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    mod = ZOO["nested_if"]
    model, _ = mod.make(0)
    out = tmp_path_factory.mktemp("bench")
    result = dycomp.bench(model, mod.sample_inputs(12), runs=2, report_dir=out,
                          backends=("eager", "torchscript", "jit-trace", "onnx-export",
                                    "onnx", "torch"))
    return model, result, out


def test_verdicts_flag_wrong_and_failed_contenders(nested):
    model, result, _ = nested
    verdict = {c.name: c.verdict for c in result.contenders}
    assert verdict["eager"] == verdict["onnx"] == verdict["torch"] == "correct"
    assert verdict["torchscript"].startswith("failed: ")  # a Python config object
    assert verdict["jit-trace"].startswith("failed: ")  # dict output with Python values
    assert verdict["onnx-export"].startswith("wrong on ")  # one baked-in path
    assert 0 < result.result("onnx-export").wrong < 1
    assert not model.training  # exporting must not leave the user's model in train mode


@pytest.fixture(scope="module")
def looped():
    """A halting loop on the torch backend: its decisions stay on the host, so the
    contender takes several paths (on onnx the loop fuses into one ONNX call)."""
    mod = ZOO["act"]
    model, _ = mod.make(0)
    return dycomp.bench(model, mod.sample_inputs(12), runs=2, backends=("eager", "torch"))


def test_statistics_and_paths(looped):
    result = looped
    compiled = result.result("torch")
    s = compiled.stats
    assert s["n"] == 24 and s["ci_low"] <= s["median"] <= s["ci_high"] <= s["p99"] + 1e-9
    assert sum(result.paths.values()) == 12 and len(result.paths) > 1
    assert set(compiled.per_path) == set(result.paths)
    assert compiled.compile_s > 0 and compiled.artifact_kb is None  # nothing to save
    assert result.environment["threads"] == 2 and result.environment["cpu"]


def test_reports_are_written(nested):
    _, result, out = nested
    data = json.loads((out / "results.json").read_text())
    assert {c["name"] for c in data["contenders"]} == {c.name for c in result.contenders}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["contender"] for r in rows} == {c.name for c in result.contenders}
    assert all(r["cpu"] == result.environment["cpu"] for r in rows)
    md = (out / "report.md").read_text()
    assert "wrong on" in md and "failed:" in md and "## Paths (dycomp)" in md
    eager_row = next(r for r in rows if r["contender"] == "eager")
    assert float(eager_row["speedup_vs_eager"]) == pytest.approx(1.0)
    assert next(r for r in rows if r["contender"] == "onnx-export")["speedup_vs_eager"] == ""
    onnx = result.result("onnx")
    assert onnx.artifact_kb > 0 and onnx.compile_s > 0


def test_summarize_known_values():
    s = summarize([1.0] * 9 + [11.0])
    assert s["median"] == 1.0 and s["p90"] == pytest.approx(2.0) and s["n"] == 10
    assert s["ci_low"] == s["ci_high"] == 1.0 or s["ci_low"] <= 1.0 <= s["ci_high"]
    assert summarize([]) == {}


def test_bench_cli(tmp_path, capsys):
    code = main(["bench", "examples/zoo/moe.py:make", "--samples", "4", "--runs", "1",
                 "--backends", "eager,onnx,onnx-export", "--report", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "onnx-export" in out and "correct" in out
    assert (tmp_path / "report.md").is_file()
    assert main(["bench", "examples/zoo/moe.py:make", "--backends", "eager,fast"]) == 2
    assert "unknown fast" in capsys.readouterr().err
    assert main(["bench", "examples/zoo/moe.py:make", "--runs", "0"]) == 2


def test_bench_rejects_no_inputs():
    with pytest.raises(ValueError, match="at least one input"):
        dycomp.bench(torch.nn.Linear(2, 2), [])


def test_html_report_embeds_decodable_plots(nested):
    import base64
    import io
    from html.parser import HTMLParser

    from PIL import Image

    _, result, out = nested

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])

    parser = Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.srcs) == 3  # contenders, paths, subgraphs
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.verify()
        assert image.size[0] > 300
    onnx = result.result("onnx")
    assert onnx.subgraph_us and 0.0 <= onnx.host_share < 1.0


def test_pass_sets_add_optimized_contenders(tmp_path, capsys):
    mod = ZOO["static_resnet"]
    model, _ = mod.make(0)
    from dycomp.passes import Prune

    result = dycomp.bench(model, mod.sample_inputs(4), backends=("eager", "onnx"), runs=1,
                          pass_sets={"prune=0.5": [Prune(0.5)]})
    pruned = result.result("onnx+prune=0.5")
    assert pruned.optimized and pruned.verdict.startswith("optimized: differs from eager")
    assert pruned.stats["n"] == 4 and result.result("onnx").verdict == "correct"
    code = main(["bench", "examples/zoo/moe.py:make", "--samples", "3", "--runs", "1",
                 "--backends", "eager,onnx", "--passes", "prune=0.5+int8"])
    assert code == 0 and "onnx+prune=0.5+int8" in capsys.readouterr().out
    assert main(["bench", "examples/zoo/moe.py:make", "--passes", "prune=lots"]) == 2
    assert "--passes 'prune=lots'" in capsys.readouterr().err


def test_no_opt_pass_set_measures_the_dynamic_optimizations(capsys):
    """`--passes no-opt` adds dycomp without the dynamic-aware passes, checked exactly."""
    mod = ZOO["gated_mul"]
    model, _ = mod.make(0)
    result = dycomp.bench(model, mod.sample_inputs(3), backends=("onnx",), runs=1,
                          pass_sets={"no-opt": ["no-opt"]})
    plain, with_opts = result.result("onnx+no-opt"), result.result("onnx")
    assert not plain.optimized and plain.verdict == "correct"
    assert with_opts.verdict == "correct"
    assert main(["bench", "examples/zoo/nested_if.py:make", "--samples", "2", "--runs", "1",
                 "--backends", "onnx", "--passes", "no-opt"]) == 0
    assert "onnx+no-opt" in capsys.readouterr().out
    assert main(["bench", "examples/zoo/moe.py:make", "--passes", "no-opt=1"]) == 2

