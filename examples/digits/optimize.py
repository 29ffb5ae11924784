"""Prune and quantize two trained dynamic CNNs with dycomp, and compare the variants.

Run: python examples/digits/optimize.py [--quick] [--out DIR] [--ckpt DIR]

Trains (or loads from ``--ckpt``) ``MultiExitCNN`` and ``GatedCNN`` on scikit-learn's
digits, then compiles seven variants of each with ``backend="onnx"``: fp32, 50 %
structured pruning (uniform and layer-adaptive allocation, each fine-tuned briefly on
the labels; layer-adaptive once more with channel counts rounded to the CPU's SIMD
block, ``round_to="auto"``), the uniform one fine-tuned further towards fp32's own decisions
(``KeepDecisions``: "kept"), int8, and pruned + int8. Every variant runs on every test
image at batch 1; the table shows test accuracy, which exits / gates the inputs took,
how often that decision matches compiled fp32 ("path agree"), median latency and
artifact size.

The decision is read from the outputs: ``MultiExitCNN`` returns the exit index (a
Python int) and ``GatedCNN`` its gate probabilities.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

if not __package__:  # run as a script: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dycomp  # noqa: E402
from dycomp.passes import KeepDecisions, Prune, Quantize  # noqa: E402
from examples.digits import data, models, train  # noqa: E402

AMOUNT = 0.5
THREADS = 2


@dataclass
class Settings:
    """How much work a run does (``--quick`` shrinks everything)."""

    epochs: int | None  # training epochs (None: train.EPOCHS)
    finetune_epochs: int
    finetune_seconds: float  # budget of each fine-tune (labels; decisions)
    n_test: int | None  # test images measured (None: all)
    n_calib: int  # training images for int8 calibration (every exit / gate needs some)
    n_prune: int  # training images for layer-adaptive pruning's distortion estimates


FULL = Settings(epochs=None, finetune_epochs=5, finetune_seconds=60.0, n_test=None,
                n_calib=256, n_prune=64)
QUICK = Settings(epochs=3, finetune_epochs=1, finetune_seconds=5.0, n_test=60, n_calib=16,
                 n_prune=16)


@dataclass
class Row:
    """One variant's measurements on the test images."""

    name: str
    accuracy: float
    decisions: list  # exit index, or tuple of gate decisions, per test image
    latency_ms: float
    size_kb: float | None


def decision(kind: str, output) -> int | tuple[int, ...]:
    """The exit taken (multi-exit) or the tuple of blocks run (gated), from an output."""
    if kind == "multi_exit":
        return int(output[1])
    return tuple(int(p > 0.5) for p in output[1][0])


@torch.no_grad()
def measure(name: str, fn, kind: str, x_test: torch.Tensor, y_test: torch.Tensor,
            size_kb: float | None = None) -> Row:
    """Run ``fn`` on every test image (batch 1), timing each call."""
    fn(x_test[:1])  # warm-up
    correct, decisions, times = 0, [], []
    for i in range(len(x_test)):
        x = x_test[i:i + 1]
        start = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - start)
        correct += int(out[0].argmax(-1).item() == y_test[i].item())
        decisions.append(decision(kind, out))
    return Row(name, correct / len(x_test), decisions, 1e3 * statistics.median(times), size_kb)


def artifact_kb(cm, path: Path) -> float:
    """Save ``cm`` to ``path`` and return the artifact's total size in KB."""
    saved = Path(cm.save(path))
    return sum(f.stat().st_size for f in saved.rglob("*") if f.is_file()) / 1024


def compile_onnx(model: nn.Module, x0: torch.Tensor, calibration=None):
    """``dycomp.compile`` with ONNX Runtime; int8 when ``calibration`` samples are given."""
    passes = [] if calibration is None else [Quantize("int8", calibration=calibration)]
    return dycomp.compile(model, (x0,), backend="onnx", passes=passes, threads=THREADS)


def pruned_copy(model: nn.Module, x0: torch.Tensor, samples: list, allocation: str,
                settings: Settings, split, round_to: int | str = 1) -> nn.Module:
    """A 50 % structurally pruned copy of ``model``, fine-tuned briefly."""
    start = time.perf_counter()
    pruned = Prune(AMOUNT, structured=True, allocation=allocation, round_to=round_to).apply(
        model, (x0,), samples=samples[:settings.n_prune])
    train.finetune(pruned, epochs=settings.finetune_epochs,
                   max_seconds=settings.finetune_seconds, split=split)
    params = sum(p.numel() for p in pruned.parameters())
    print(f"  pruned ({allocation}, round_to={round_to}): {params} parameters; pruned + "
          f"fine-tuned in "
          f"{time.perf_counter() - start:.1f} s")
    return pruned.eval()


def decisions_kept(model: nn.Module, pruned: nn.Module, samples: list,
                   settings: Settings) -> nn.Module:
    """A copy of ``pruned`` fine-tuned further towards ``model``'s own decisions (exits,
    gates), image by image (``KeepDecisions``)."""
    kept = copy.deepcopy(pruned)
    report = KeepDecisions(epochs=settings.finetune_epochs,
                           max_seconds=settings.finetune_seconds).apply(kept, model, samples)
    print(f"  pruned (uniform), decisions kept: {report.summary()}")
    return kept.eval()


def variants(model: nn.Module, x0: torch.Tensor, samples: list, settings: Settings,
             split) -> dict[str, tuple[nn.Module, list | None]]:
    """Variant name -> (eager model to compile, int8 calibration samples or None)."""
    uniform = pruned_copy(model, x0, samples, "uniform", settings, split)
    adaptive = pruned_copy(model, x0, samples, "layer_adaptive", settings, split)
    rounded = pruned_copy(model, x0, samples, "layer_adaptive", settings, split, "auto")
    return {
        "fp32": (model, None),
        "pruned 50% (uniform)": (uniform, None),
        "pruned 50% (layer_adaptive)": (adaptive, None),
        "pruned 50% (layer_adaptive, rounded)": (rounded, None),
        "pruned 50% (uniform), kept": (decisions_kept(model, uniform, samples, settings), None),
        "int8": (model, samples),
        "pruned 50% (uniform) + int8": (uniform, samples),
    }


def evaluate_model(kind: str, settings: Settings, split, ckpt: Path, out: Path) -> list[Row]:
    """Train or load ``kind``, compile its variants and measure each one."""
    model = train.load_or_train(kind, ckpt, epochs=settings.epochs, split=split)
    x_train, _, x_test, y_test = split
    if settings.n_test is not None:
        x_test, y_test = x_test[:settings.n_test], y_test[:settings.n_test]
    x0 = x_test[:1]
    samples = [(x_train[i:i + 1],) for i in range(settings.n_calib)]
    rows = [measure("eager fp32 (PyTorch)", model, kind, x_test, y_test)]
    for name, (eager, calibration) in variants(model, x0, samples, settings, split).items():
        start = time.perf_counter()
        cm = compile_onnx(eager, x0, calibration)
        slug = name.replace(" ", "_").replace("%", "").replace("(", "").replace(")", "")
        size = artifact_kb(cm, out / f"{kind}-{slug}.dyc")
        print(f"  compiled {name} in {time.perf_counter() - start:.1f} s")
        rows.append(measure(name, cm, kind, x_test, y_test, size))
    return rows


def summarize(kind: str, decisions: list) -> str:
    """Exit distribution (multi-exit) or per-block gate-off rate (gated), in %."""
    n = len(decisions)
    if kind == "multi_exit":
        counts = [decisions.count(i) for i in range(len(models.MULTI_EXIT_WIDTHS))]
        return "/".join(f"{100 * c / n:.0f}" for c in counts)
    blocks = len(decisions[0])
    return "/".join(f"{100 * sum(1 - d[b] for d in decisions) / n:.0f}" for b in range(blocks))


def print_table(kind: str, rows: list[Row]) -> None:
    """Plain aligned text; path agreement is against the compiled fp32 row."""
    reference = next(r for r in rows if r.name == "fp32").decisions
    what = "exits %" if kind == "multi_exit" else "gate off % (per block)"
    header = ["variant", "accuracy %", what, "path agree %", "median ms", "size KB"]
    lines = [header]
    for r in rows:
        agree = sum(a == b for a, b in zip(r.decisions, reference)) / len(reference)
        size = "-" if r.size_kb is None else f"{r.size_kb:.0f}"
        lines.append([r.name, f"{100 * r.accuracy:.1f}", summarize(kind, r.decisions),
                      f"{100 * agree:.1f}", f"{r.latency_ms:.3f}", size])
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(line[1:], widths[1:])]
        print("  ".join(cells))


def main(argv=None) -> dict[str, list[Row]]:
    """Parse the command line, measure both models and print one table each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 training epochs, 60 test images (a smoke test)")
    parser.add_argument("--out", type=Path, help="artifact directory (default: a temp dir)")
    parser.add_argument("--ckpt", type=Path, default=train.CKPT_DIR,
                        help=f"checkpoint cache (default {train.CKPT_DIR})")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(THREADS)
    split = data.load()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for kind in ("multi_exit", "gated"):
            print(f"\n== {kind} ==")
            results[kind] = evaluate_model(kind, settings, split, args.ckpt, out)
            print()
            print_table(kind, results[kind])
    return results


if __name__ == "__main__":
    main()
