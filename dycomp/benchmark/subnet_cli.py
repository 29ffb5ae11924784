"""`dycomp bench TARGET --selector NAME=V1,V2,...`: the per-sub-network bench's flags,
their validation, the progress bar, the table, the plot and `--save-latency`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from dycomp.benchmark import DYCOMP

SUBNET_DEFAULT = ("eager", "onnx")
_FLAGS = (("--labels", "labels"), ("--plot", "plot"), ("--save-latency", "save_latency"),
          ("--sign-key", "sign_key"))
_PLAIN = {"markup": False, "highlight": False, "soft_wrap": True}


def add_arguments(p) -> None:
    p.add_argument("--selector", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="bench every sub-network of a model with selectors (repeat per "
                        "selector): an argument's values, e.g. width=0.25,0.5,1.0 (each "
                        "read as JSON, else a string), or setter calls as JSON lists, e.g. "
                        "'subnet=[\"set_active_subnet\",{\"d\":2}],[\"set_active_subnet\","
                        "{\"d\":4}]'. One row per sub-network: eager (configured the same "
                        "way) vs dycomp")
    p.add_argument("--labels", type=Path, metavar="FILE.npy",
                   help="with --selector and --inputs: integer class labels, one per sample "
                        "of the .npz (shape (N,), or (N, batch)); adds top-1 accuracy of "
                        "eager and dycomp per sub-network")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="with --selector: write the latency/accuracy plot (latency/"
                        "parameters without --labels), one labelled point per sub-network")
    p.add_argument("--save-latency", type=Path, metavar="ART",
                   help="with --selector: store dycomp's medians in the artifact ART (a "
                        "model with the same selectors) so that `dycomp run ART --budget-ms` "
                        "and select(budget_ms) can use them; a signature.json there is "
                        "removed (re-sign, or give --sign-key). If ART does not exist, the "
                        "benchmarked model is saved there")
    p.add_argument("--sign-key", type=Path, metavar="KEY",
                   help="with --save-latency: re-sign ART with this Ed25519 private key")


def validate(cfg) -> None:
    """UsageError for flags that cannot work together (called by BenchConfig)."""
    from dycomp.cli import UsageError

    given = [flag for flag, field in _FLAGS if getattr(cfg, field) is not None]
    if cfg.selectors is None:
        if given:
            raise UsageError(f"{', '.join(given)} need{'s' * (len(given) == 1)} --selector")
        return
    ours = [b for b in cfg.backends if b in DYCOMP]
    if len(ours) != 1 or any(b not in DYCOMP and b != "eager" for b in cfg.backends):
        raise UsageError(f"with --selector, bench compares eager with one dycomp backend: "
                         f"--backends eager,onnx (or tvm, torch); got {','.join(cfg.backends)}")
    if cfg.passes:
        raise UsageError("--passes cannot be combined with --selector")
    _validate_files(cfg, ours[0])


def _validate_files(cfg, backend: str) -> None:
    from dycomp.cli import UsageError

    if cfg.labels is not None:
        if cfg.data is None:
            raise UsageError("--labels needs --inputs FILE.npz: one label per sample of it")
        if cfg.labels.suffix != ".npy" or not cfg.labels.is_file():
            raise UsageError(f"--labels {str(cfg.labels)!r} must be an existing .npy file")
    if cfg.plot is not None and cfg.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {str(cfg.plot)!r} must end in .png")
    if cfg.sign_key is not None:
        if cfg.save_latency is None:
            raise UsageError("--sign-key needs --save-latency")
        if not cfg.sign_key.is_file():
            raise UsageError(f"--sign-key {str(cfg.sign_key)!r} does not exist")
    art = cfg.save_latency
    if art is not None and _exists(art):
        if not _is_selected(art):
            raise UsageError(f"--save-latency {str(art)!r} exists but is not a dycomp "
                             "artifact compiled with selectors")
        missing = sorted(set(_labels(cfg.selectors)) - set(_stored_labels(art)))
        if missing:
            raise UsageError(f"--save-latency {str(art)!r} has no sub-network "
                             f"{', '.join(missing)}; it holds "
                             f"{', '.join(_stored_labels(art))}")
    elif art is not None and backend not in ("onnx", "tvm"):
        raise UsageError(f"--save-latency {str(art)!r} does not exist and the {backend} "
                         "backend cannot be saved: use --backends eager,onnx")


def _exists(path: Path) -> bool:
    return path.exists() and not (path.is_dir() and not any(path.iterdir()))


def _is_selected(path: Path) -> bool:
    from dycomp.runtime import artifact as rt
    from dycomp.runtime.selectors import is_selected

    raw = rt.read_optional(path, rt.MANIFEST) if path.is_dir() else None
    return raw is not None and is_selected(raw)


def _labels(selectors: dict) -> list[str]:
    """The label of every sub-network `selectors` declares (as `Selected.label`)."""
    from dycomp.runtime.selectors import describe
    from dycomp.selectors import parse

    decl = parse(selectors)
    return [", ".join(describe(s, v) for s, v in zip(decl, values))
            for values in itertools.product(*(s["values"] for s in decl))]


def _stored_labels(path: Path) -> list[str]:
    from dycomp.runtime import artifact as rt

    manifest = json.loads(rt.manifest_bytes(path).decode("utf-8"))
    return [str(e.get("label")) for e in manifest.get("subnets", [])]


def read_labels(path: Path, n: int) -> np.ndarray:
    """The labels in `path`: integers, one per sample (UsageError otherwise)."""
    from dycomp.cli import UsageError

    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"cannot read --labels {str(path)!r} as a .npy array: {e}") from None
    if labels.dtype.kind not in "iu" or labels.ndim not in (1, 2) or len(labels) != n:
        raise UsageError(f"--labels {str(path)!r} holds a {labels.dtype} array of shape "
                         f"{labels.shape}; expected integer class indices of shape ({n},) "
                         f"or ({n}, batch): one per sample of --inputs")
    return labels


def subnet_bench(cfg, model, inputs: list, out: Console) -> None:
    """Bench every sub-network; print the table, write the plot, reports and latencies."""
    from dycomp.benchmark.subnets import LabelsError, bench_subnets
    from dycomp.cli import UsageError

    labels = None if cfg.labels is None else read_labels(cfg.labels, len(inputs))
    n = int(np.prod([len(v) for v in cfg.selectors.values()]))
    backend = next(b for b in cfg.backends if b in DYCOMP)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task("sub-networks", total=2 * n)

        def step(message: str) -> None:
            started = bar.tasks[0].description != "sub-networks"
            bar.update(task, advance=1 if started else 0, description=message)

        try:
            result = bench_subnets(model, inputs, cfg.selectors, backend=backend,
                                   method=cfg.method, threads=cfg.threads, runs=cfg.runs,
                                   labels=labels, progress=step)
        except LabelsError as e:
            raise UsageError(f"--labels {str(cfg.labels)!r}: {e}") from None
    out.print(table(result))
    _outputs(cfg, result, out)


def table(result) -> Table:
    from dycomp.benchmark.subnet_report import rows

    t = Table(title=f"{result.model}: {len(result.rows)} sub-networks, {result.inputs} inputs "
                    f"x {result.runs} rounds, {_threads(result.threads)}, dycomp "
                    f"{result.backend} (compiled in {result.compile_s:.1f} s)")
    data = rows(result)
    for col in data[0]:
        t.add_column(col, justify="left" if col in ("sub-network", "matches eager") else
                     "right")
    for r in data:
        t.add_row(*(Text(_cell(k, v)) for k, v in r.items()))
    return t


def _threads(n: int) -> str:
    return f"{n} thread{'s' * (n != 1)}"


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "speedup":
        return f"{v:.2f}x"
    if key.endswith("top-1"):
        return f"{100 * v:.1f} %"
    if key == "params":
        return f"{v:,}"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _outputs(cfg, result, out: Console) -> None:
    """--plot, --report and --save-latency."""
    from dycomp.benchmark.subnet_report import plot_png

    png = plot_png(result) if cfg.plot is not None or cfg.report is not None else None
    if cfg.plot is not None:
        cfg.plot.parent.mkdir(parents=True, exist_ok=True)
        cfg.plot.write_bytes(png)
        out.print(f"plot written to {cfg.plot}", **_PLAIN)
    if cfg.report is not None:
        result.write(cfg.report, png)
        out.print(f"reports written to {cfg.report}/ (report.html with the plot, report.md, "
                  "results.json, results.csv)", **_PLAIN)
    if cfg.save_latency is not None:
        for note in save_latency(result, cfg.save_latency, cfg.sign_key):
            out.print(note, **_PLAIN)


def save_latency(result, path: Path, sign_key: Path | None = None) -> list[str]:
    """Store the dycomp medians in the artifact at `path` (save the benchmarked model
    there if there is none); returns what was done."""
    from dycomp.runtime.latency_store import store_latency

    if _exists(path):
        return store_latency(path, result.latency(), private_key=sign_key)
    result.compiled.save(path)  # its latency table: the dycomp medians
    notes = [f"saved the benchmarked model with its latency table to {path}"]
    if sign_key is not None:
        from dycomp.runtime.artifact import sign

        notes.append(f"signed {path} with key {sign(path, sign_key)['key']}")
    return notes
