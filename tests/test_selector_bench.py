"""`dycomp bench --selector`: per sub-network latency and accuracy, the plot, the stored
latency table and `dycomp run --budget-ms` (issue #26, "choose by budget")."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dycomp
from dycomp.benchmark.subnets import LabelsError, top1
from dycomp.cli import main
from dycomp.cli_selectors import parse_selector_flags, split_top_level
from dycomp.runtime import trust
from dycomp.runtime.latency_store import store_latency

ROOT = Path(__file__).resolve().parents[1]
TARGET = f"{Path(__file__).resolve()}:make"
WIDTHS = [0.25, 0.5, 1.0]
LABELS = ["width=0.25", "width=0.5", "width=1.0"]


class Slim(nn.Module):
    """A slimmable CNN (weights sliced in forward) with a data-dependent scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x, width=1.0):
        c = int(16 * width)
        h = F.relu(F.conv2d(x, self.conv.weight[:c], self.conv.bias[:c], padding=1))
        h = h.mean((2, 3))
        if h.abs().mean() > 0.3:
            h = h * 0.5
        return F.linear(h, self.fc.weight[:, :c], self.fc.bias), c


class Depth(nn.Module):
    """Depth chosen by a setter, as Once-for-All's `set_active_subnet(d=...)`."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.out = nn.Linear(8, 3)
        self.depth = 3

    def set_depth(self, d=3):
        self.depth = d

    def forward(self, x):
        for blk in self.blocks[:self.depth]:
            x = torch.relu(blk(x)) + x
        return self.out(x)


def make():
    torch.manual_seed(0)
    return Slim(), (torch.randn(1, 3, 6, 6),)


def _samples(n=8):
    g = torch.Generator().manual_seed(1)
    return np.stack([(torch.randn(1, 3, 6, 6, generator=g) * (0.5 + i % 3)).numpy()
                     for i in range(n)])


def _eager_predictions(x: np.ndarray, width: float) -> np.ndarray:
    model, _ = make()
    with torch.no_grad():
        return np.array([int(model(torch.from_numpy(s), width=width)[0].argmax())
                         for s in x])


def call(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """One `dycomp bench --selector` run: labels, plot, report and a saved artifact."""
    d = tmp_path_factory.mktemp("bench")
    x = _samples()
    labels = _eager_predictions(x, 0.5)
    labels[:2] = (labels[:2] + 1) % 4  # not every width is right everywhere
    np.savez(d / "in.npz", x)
    np.save(d / "labels.npy", labels)
    code = main(["bench", TARGET, "--selector", "width=0.25,0.5,1.0", "--inputs",
                 str(d / "in.npz"), "--labels", str(d / "labels.npy"), "--plot",
                 str(d / "plot.png"), "--report", str(d / "rep"), "--save-latency",
                 str(d / "slim.dyc"), "--runs", "2", "--threads", "1"])
    assert code == 0
    return d, x, labels, json.loads((d / "rep" / "results.json").read_text())


def test_a_row_per_width_matching_eager(benched, capsys):
    _, _, _, results = benched
    rows = results["rows"]
    assert [r["label"] for r in rows] == LABELS
    assert [r["values"] for r in rows] == [{"width": w} for w in WIDTHS]
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]
    for r in rows:
        assert r["wrong"] == 0 and r["eager_ms"] > 0 and r["dycomp_ms"] > 0
        assert r["speedup"] == pytest.approx(r["eager_ms"] / r["dycomp_ms"])
    md = (benched[0] / "rep" / "report.md").read_text()
    assert all(f"| {label} |" in md for label in LABELS)


def test_accuracy_is_the_hand_computed_top1(benched):
    _, x, labels, results = benched
    for r, w in zip(results["rows"], WIDTHS):
        want = float((_eager_predictions(x, w) == labels).mean())
        assert r["eager_acc"] == pytest.approx(want) and r["dycomp_acc"] == pytest.approx(want)
    assert results["rows"][1]["eager_acc"] == pytest.approx(6 / 8)


def test_plot_and_html_report_written(benched):
    d = benched[0]
    png = (d / "plot.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    page = (d / "rep" / "report.html").read_text()
    assert "data:image/png;base64," in page and "dycomp top-1" in page


def test_stored_table_is_what_select_uses_after_load(benched):
    d, _, _, results = benched
    rt = dycomp.runtime.load(d / "slim.dyc")
    measured = {r["label"]: r["dycomp_ms"] for r in results["rows"]}
    assert {rt.label(k): ms for k, ms in rt.latency.items()} == pytest.approx(measured)
    assert rt.select(max(measured.values()) + 1.0) == {"width": 1.0}  # all fit: the largest
    with pytest.raises(ValueError, match=f"{min(measured.values()):.3f} ms"):
        rt.select(min(measured.values()) / 2)


@pytest.fixture
def known(benched, tmp_path):
    """A copy of the saved artifact with a known latency table (0.25: 1 ms, 0.5: 2 ms,
    1.0: 3 ms), signed before the table was stored."""
    art = tmp_path / "known.dyc"
    shutil.copytree(benched[0] / "slim.dyc", art)
    trust.keygen(tmp_path / "key", tmp_path / "key.pub")
    dycomp.runtime.artifact.sign(art, tmp_path / "key")
    notes = store_latency(art, dict(zip(LABELS, [1.0, 2.0, 3.0])))
    assert "removed" in notes[-1] and not (art / trust.SIGNATURE).exists()
    return art, tmp_path


def test_run_budget_ms_runs_the_chosen_width(known, benched, capsys):
    art, tmp = known
    x = benched[1][3]
    np.save(tmp / "x.npy", x)
    code, out, err = call(capsys, "run", art, "--input", tmp / "x.npy", "--budget-ms", "2.5",
                          "--out", tmp / "y.npz")
    assert code == 0, err
    assert "sub-network: width=0.5" in out and "2.000 ms measured" in out
    model, _ = make()
    with torch.no_grad():
        want, c = model(torch.from_numpy(x), width=0.5)
    got = np.load(tmp / "y.npz")
    np.testing.assert_allclose(got["out_0"], want.numpy(), rtol=1e-4, atol=1e-4)
    assert int(got["out_1"]) == c == 8


def test_run_budget_ms_without_torch_and_when_nothing_fits(known, benched, capsys):
    art, tmp = known
    np.save(tmp / "x.npy", benched[1][0])
    code = ("import sys; sys.modules['torch'] = None\nfrom dycomp.cli import main\n"
            f"sys.exit(main(['run', {str(art)!r}, '--input', {str(tmp / 'x.npy')!r}, "
            "'--budget-ms', '100']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "sub-network: width=1.0" in r.stdout, r.stderr
    code, _, err = call(capsys, "run", art, "--input", tmp / "x.npy", "--budget-ms", "0.5")
    assert code == 2
    assert "fastest, width=0.25, takes 1.000 ms" in one_error_line(err)
    code, _, err = call(capsys, "run", art, "--input", tmp / "x.npy", "--budget-ms", "1",
                        "--arg", "width=0.5")
    assert code == 2 and "--budget-ms" in one_error_line(err)


def test_resigned_table_verifies_and_missing_table_is_explained(known, benched, capsys):
    art, tmp = known
    notes = store_latency(art, {"width=1.0": 0.5}, private_key=tmp / "key")
    assert notes[-1].startswith("re-signed")
    rt = dycomp.runtime.load(art, public_key=tmp / "key.pub")
    assert rt.select(0.6) == {"width": 1.0}  # 0.5 ms now, the others kept
    assert rt.latency[(0,)] == 1.0
    with pytest.raises(dycomp.runtime.errors.ArtifactError, match="no sub-network width=2"):
        store_latency(art, {"width=2": 1.0})
    manifest = json.loads((art / "manifest.json").read_text())
    for e in manifest["subnets"]:
        e["latency_ms"] = None
    (art / "manifest.json").write_text(json.dumps(manifest))
    np.save(tmp / "x.npy", benched[1][0])
    code, _, err = call(capsys, "run", art, "--input", tmp / "x.npy", "--budget-ms", "9")
    assert code == 2 and "--save-latency" in one_error_line(err)


def test_save_latency_into_an_existing_artifact_re_signed(known, capsys):
    art, tmp = known
    np.savez(tmp / "in.npz", _samples(2))
    code, _, err = call(capsys, "bench", TARGET, "--selector", "width=0.25,2.0",
                        "--save-latency", art)  # refused before compiling anything
    assert code == 2 and "has no sub-network width=2.0" in one_error_line(err)
    code, out, err = call(capsys, "bench", TARGET, "--selector", "width=0.5,1.0", "--inputs",
                          tmp / "in.npz", "--backends", "eager,torch", "--runs", "1",
                          "--save-latency", art, "--sign-key", tmp / "key")
    assert code == 0, err
    assert "stored the median latency of 2 of 3 sub-networks" in out and "re-signed" in out
    rt = dycomp.runtime.load(art, public_key=tmp / "key.pub")
    assert rt.latency[(0,)] == 1.0  # not benched: kept
    assert rt.latency[(1,)] not in (2.0, 3.0) and rt.latency[(2,)] not in (2.0, 3.0)
    assert rt.latency[(1,)] > 0 and rt.latency[(2,)] > 0


@pytest.mark.parametrize("problem", ["float", "length", "garbage", "no-inputs", "no-selector"])
def test_bad_labels_are_usage_errors(tmp_path, capsys, problem):
    np.savez(tmp_path / "in.npz", _samples(4))
    labels = tmp_path / "labels.npy"
    if problem == "garbage":
        labels.write_bytes(b"not an array")
    else:
        np.save(labels, np.zeros(4 if problem != "length" else 3,
                                 dtype="float32" if problem == "float" else "int64"))
    argv = ["bench", TARGET, "--labels", labels]
    argv += [] if problem == "no-selector" else ["--selector", "width=0.5,1.0"]
    argv += [] if problem == "no-inputs" else ["--inputs", tmp_path / "in.npz"]
    code, _, err = call(capsys, *argv)
    assert code == 2
    line = one_error_line(err)
    assert {"float": "integer class indices", "length": "shape (3,)",
            "garbage": "cannot read --labels", "no-inputs": "needs --inputs",
            "no-selector": "needs --selector"}[problem] in line, line


def test_labels_outside_the_classes_are_refused():
    logits = [torch.tensor([[0.1, 0.9, 0.0]]), torch.tensor([[2.0, 0.0, 0.0]])]
    assert top1(logits, [np.array([1]), np.array([1])]) == 0.5
    with pytest.raises(LabelsError, match="3 classes"):
        top1(logits, [np.array([1]), np.array([3])])


def test_selector_flags():
    assert split_top_level('a,[1,2],{"k":1,"j":2},"x,y"') == ["a", "[1,2]", '{"k":1,"j":2}',
                                                            '"x,y"']
    got = parse_selector_flags(["width=0.25,0.5,1", "mode=fast,slow",
                                'sub=["set_depth",{"d":1}],["set_depth",[2]]'])
    assert got == {"width": [0.25, 0.5, 1], "mode": ["fast", "slow"],
                   "sub": [("set_depth", {"d": 1}), ("set_depth", [2])]}
    for bad in ("width", "width=", "1x=0.5", "width=0.5,,1.0", "width=0.5,0.5"):
        with pytest.raises(dycomp.cli.UsageError):
            parse_selector_flags([bad])


def test_python_api_setter_selector_configures_eager():
    torch.manual_seed(0)
    model = Depth().eval()
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(1, 8, generator=g) for _ in range(4)]
    labels = np.array([0, 1, 2, 0])
    calls = [("set_depth", {"d": 1}), ("set_depth", {"d": 3})]
    result = dycomp.bench(model, inputs, selectors={"depth": calls},
                          backends=("eager", "torch"), runs=1, threads=1, labels=labels)
    assert [r.label for r in result.rows] == ["set_depth(d=1)", "set_depth(d=3)"]
    assert all(r.wrong == 0 for r in result.rows)  # eager ran with the same depth
    assert model.depth == 3  # the model's state restored
    fast, slow = (r.dycomp_ms for r in result.rows)
    assert result.compiled.select(max(fast, slow)) == {"depth": ["set_depth", [], {"d": 3}]}
    for r, d in zip(result.rows, (1, 3)):
        model.set_depth(d)
        with torch.no_grad():
            want = float(np.mean([int(model(x).argmax()) == y for x, y in zip(inputs, labels)]))
        assert r.eager_acc == pytest.approx(want) == r.dycomp_acc
    with pytest.raises(ValueError, match="one dycomp backend"):
        dycomp.bench(model, inputs, selectors={"depth": calls}, backends=("eager", "jit-trace"))
