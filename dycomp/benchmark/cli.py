"""`dycomp bench TARGET ...`: the command line of `dycomp.bench`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from dycomp.benchmark import CONTENDERS, DEFAULT, DYCOMP


@dataclass(frozen=True)
class BenchConfig:
    """`dycomp bench`: what to load, on which inputs, against which contenders."""

    target: object  # dycomp.target.Target
    method: str = "forward"
    inputs: tuple = ()  # InputShape
    data: Path | None = None
    samples: int = 20
    backends: tuple[str, ...] = ()
    threads: int = 2
    runs: int = 5
    report: Path | None = None
    passes: tuple[str, ...] = ()  # pass-set specs, e.g. "prune=0.5+int8"
    selectors: dict | None = None  # --selector: one row per sub-network (subnet_cli)
    labels: Path | None = None
    plot: Path | None = None
    save_latency: Path | None = None
    sign_key: Path | None = None

    def __post_init__(self):
        from dycomp.benchmark.subnet_cli import validate
        from dycomp.cli import UsageError

        unknown = [b for b in self.backends if b not in CONTENDERS]
        if unknown or not self.backends:
            raise UsageError(f"--backends: unknown {', '.join(unknown) or '(none given)'}; "
                             f"choose from {','.join(CONTENDERS)}")
        for flag, value, least in (("--samples", self.samples, 1), ("--threads", self.threads, 1),
                                   ("--runs", self.runs, 1)):
            if value < least:
                raise UsageError(f"{flag} must be at least {least}, got {value}")
        if self.data is not None and (self.data.suffix != ".npz" or not self.data.is_file()):
            raise UsageError(f"--inputs {str(self.data)!r} must be an existing .npz file")
        for spec in self.passes:
            pass_set(spec, [])  # validates
        validate(self)  # --selector and its flags

    def pass_sets(self, calibration: list) -> dict:
        return {spec: pass_set(spec, calibration) for spec in self.passes}


NO_OPT = "no-opt"


def pass_set(spec: str, calibration: list) -> list:
    """`prune=0.5`, `prune=0.5:layer_adaptive`, `int8`, `fp16`, `no-opt` (the
    dynamic-aware optimizations off), joined with '+'."""
    from dycomp.cli import UsageError
    from dycomp.passes import Prune, Quantize

    out = []
    for part in spec.split("+"):
        name, _, arg = part.partition("=")
        try:
            if name == "prune":
                amount, _, alloc = arg.partition(":")
                out.append(Prune(float(amount), allocation=alloc or "uniform"))
            elif name == "int8":
                out.append(Quantize("int8", calibration=calibration[:32] or None))
            elif name == "fp16":
                out.append(Quantize("fp16"))
            elif name == NO_OPT and not arg:
                out.append(NO_OPT)
            else:
                raise ValueError(f"unknown pass {name!r}")
        except ValueError as e:
            raise UsageError(f"--passes {spec!r}: {e}; use e.g. prune=0.5, "
                             "prune=0.5:layer_adaptive, int8, fp16, no-opt, joined with '+'"
                             ) from None
    return out


def add_bench(sub, formatter) -> None:
    p = sub.add_parser(
        "bench", help="latency of dycomp vs eager, TorchScript, torch.compile, tracing",
        formatter_class=formatter,
        description="Benchmark a model against every alternative on the same inputs and "
                    "threads (warm-up, interleaved rounds, median/p90/p99 with bootstrap "
                    "CIs), checking every contender's outputs against eager PyTorch: "
                    "wrong answers are flagged, build failures shown with their reason.",
        epilog="examples:\n  dycomp bench examples/zoo/multi_exit.py:make --report out/\n"
               "  dycomp bench model.py:Net --input 1x3x32x32 --samples 50 "
               "--backends eager,onnx,tvm\n"
               "  dycomp bench slim.py:make --selector width=0.25,0.5,1.0 --inputs val.npz "
               "--labels val_labels.npy --plot pareto.png --save-latency slim.dyc\n")
    p.add_argument("target", metavar="TARGET", help="path/to/file.py:factory or pkg.mod:factory")
    p.add_argument("--method", default="forward", help="method to benchmark (default forward)")
    p.add_argument("--input", action="append", default=[], metavar="SHAPE[:DTYPE]",
                   help="example input shape, one per input (default: the factory's)")
    p.add_argument("--inputs", dest="data", type=Path, metavar="FILE.npz",
                   help="benchmark inputs: one array per input, samples first")
    p.add_argument("--samples", type=int, default=20,
                   help="without --inputs: this many generated inputs (default 20)")
    p.add_argument("--backends",
                   help=f"comma-separated contenders from {','.join(CONTENDERS)} "
                        f"(default: {','.join(DEFAULT)}; with --selector: eager,onnx)")
    p.add_argument("--threads", type=int, default=2, help="threads for every contender")
    p.add_argument("--runs", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--passes", action="append", default=[], metavar="SET",
                   help="also run each dycomp backend with these passes (repeatable): "
                        "prune=0.5[:layer_adaptive], int8 (calibrated on the inputs), fp16, "
                        "no-opt (without the dynamic-aware optimizations), joined with '+', "
                        "e.g. --passes prune=0.5+int8 --passes no-opt")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write report.html, report.md, results.json and results.csv here")
    from dycomp.benchmark.subnet_cli import add_arguments

    add_arguments(p)
    p.set_defaults(command_fn=bench_command, make_config=_config)


def _config(ns: argparse.Namespace) -> BenchConfig:
    from dycomp.benchmark.subnet_cli import SUBNET_DEFAULT
    from dycomp.cli import InputShape
    from dycomp.cli_selectors import parse_selector_flags
    from dycomp.target import Target

    selectors = parse_selector_flags(ns.selector) if ns.selector else None
    backends = ns.backends or ",".join(DEFAULT if selectors is None else SUBNET_DEFAULT)
    return BenchConfig(Target.parse(ns.target), ns.method,
                       tuple(InputShape.parse(s) for s in ns.input), ns.data, ns.samples,
                       tuple(b.strip() for b in backends.split(",") if b.strip()),
                       ns.threads, ns.runs, ns.report, tuple(ns.passes), selectors,
                       ns.labels, ns.plot, ns.save_latency, ns.sign_key)


def bench_command(cfg: BenchConfig, out: Console) -> None:
    from dycomp import target as tg
    from dycomp.benchmark import bench
    from dycomp.benchmark.report import rows
    from dycomp.check import variants
    from dycomp.cli import _calibration, _examples, _method

    loaded = tg.load_target(cfg.target)
    _method(loaded.model, cfg.method)
    examples = _examples(cfg, loaded)
    inputs = (_calibration(cfg.data, examples, "--inputs") if cfg.data is not None else
              [a for a, _ in variants(examples, {}, n=cfg.samples - 1)])
    if cfg.selectors is not None:
        from dycomp.benchmark.subnet_cli import subnet_bench

        return subnet_bench(cfg, loaded.model, inputs, out)
    sets = cfg.pass_sets(inputs)
    steps = len(cfg.backends) + len(sets) * sum(b in DYCOMP for b in cfg.backends) + cfg.runs
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=out, transient=True) as bar:
        task = bar.add_task("benchmarking", total=steps)

        def step(message: str) -> None:
            done = bar.tasks[0].description != "benchmarking"
            bar.update(task, advance=1 if done else 0, description=message)

        result = bench(loaded.model, inputs, backends=cfg.backends, method=cfg.method,
                       threads=cfg.threads, runs=cfg.runs, report_dir=cfg.report,
                       pass_sets=sets, progress=step)
    table = Table(title=f"{result.model}: {result.inputs} inputs x {result.runs} rounds, "
                        f"{result.threads} threads")
    for col in ("contender", "result", "median ms", "95 % CI", "p99 ms", "vs eager",
                "compile s"):
        table.add_column(col)
    for r in rows(result):
        ci = ("-" if r["ci_low_ms"] is None else f"{r['ci_low_ms']:.3f}-{r['ci_high_ms']:.3f}")
        table.add_row(*(Text(c) for c in (
            r["contender"], _short(r["verdict"]), _f(r["median_ms"]), ci, _f(r["p99_ms"]),
            "-" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x",
            _f(r["compile_s"], ".2f"))))
    out.print(table)
    if cfg.report is not None:
        out.print(f"reports written to {cfg.report}/ (report.html, report.md, results.json, "
                  "results.csv)")


def _short(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def _f(v, fmt=".3f") -> str:
    return "-" if v is None else format(v, fmt)
