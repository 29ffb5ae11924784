"""`dycomp.bench`: dycomp against the alternatives, on the user's model and inputs.

Every contender gets the same inputs and thread count, a warm-up pass, then interleaved
rounds (each round runs every contender over all inputs, in a rotating order). Outputs
are compared with eager PyTorch on every input: a contender that answers wrongly
(tracing bakes in one path) is reported as "wrong on X % of inputs", and one that cannot
be built as "failed: reason".
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dycomp.benchmark.stats import summarize

# Importing this package (the CLI does, to list the contenders) must not import torch:
# `dycomp run` and `inspect` work without it.
CONTENDERS = ("eager", "torchscript", "torch-compile", "jit-trace", "onnx-export", "onnx",
              "tvm", "torch")
DYCOMP = ("onnx", "tvm", "torch")
DEFAULT = ("eager", "torchscript", "torch-compile", "jit-trace", "onnx-export", "onnx")


@dataclass
class ContenderResult:
    name: str
    status: str = "ok"  # "ok" or "failed: <reason>"
    compile_s: float = 0.0  # building it and its first call
    wrong: float = 0.0  # fraction of inputs answered differently from eager
    optimized: bool = False  # pruned/quantized: differences from eager are expected
    stats: dict = field(default_factory=dict)  # summarize() of the per-call times
    artifact_kb: float | None = None
    per_path: dict[str, dict] = field(default_factory=dict)  # path -> summarize()
    subgraph_us: dict[str, float] = field(default_factory=dict)  # mean us per call
    host_share: float | None = None  # fraction of a call spent outside subgraphs
    rss_mb: float | None = None  # resident memory the process grew by building and running it
    times_ms: list[float] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return self.status
        if self.optimized:
            return f"optimized: differs from eager on {self.wrong:.0%} of inputs"
        return f"wrong on {self.wrong:.0%} of inputs" if self.wrong else "correct"


@dataclass
class BenchResult:
    model: str
    threads: int
    inputs: int
    runs: int
    environment: dict
    contenders: list[ContenderResult]
    paths: dict[str, int] = field(default_factory=dict)  # eager-equivalent path -> count

    def result(self, name: str) -> ContenderResult:
        return next(c for c in self.contenders if c.name == name)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, report_dir) -> dict[str, Path]:
        from dycomp.benchmark.report import write

        return write(self, Path(report_dir))


def bench(model, inputs, *, backends=DEFAULT, method: str = "forward", threads: int = 2,
          runs: int = 5, report_dir=None, pass_sets: dict | None = None,
          progress=None, selectors: dict | None = None, labels=None):
    """Benchmark `model.<method>` on `inputs` (a list of input tuples) for every
    contender in `backends`; write the reports to `report_dir` when given.

    `pass_sets` ({label: [Prune(...), Quantize(...)]}) adds, per dycomp backend, a
    contender "<backend>+<label>" compiled with those passes; its differences from eager
    are reported as expected ("optimized"), not as wrong answers. The marker "no-opt"
    in a set compiles without the dynamic-aware optimizations (exact, so checked).

    `selectors` (as for `dycomp.compile`): one row per sub-network instead, eager against
    the one dycomp backend in `backends`, with top-1 accuracy given `labels` (one class
    index, or one per batch row, per input); returns a `subnets.SubnetBenchResult`."""
    if selectors is not None:
        if pass_sets:
            raise ValueError("pass_sets and selectors cannot be combined")
        return _bench_selected(model, inputs, selectors, backends, method, threads, runs,
                               report_dir, labels, progress)
    import torch

    from dycomp.api import _resolve

    inputs = [x if isinstance(x, tuple) else (x,) for x in inputs]
    if not inputs:
        raise ValueError("bench() needs at least one input tuple")
    torch.set_num_threads(threads)
    fn = _resolve(model, method)
    with torch.no_grad():
        reference = [fn(*x) for x in inputs]
        names = list(backends) + [f"{b}+{label}" for label in (pass_sets or {})
                                  for b in backends if b in DYCOMP]
        built = {name: _build(name, fn, inputs, reference, threads,
                              (pass_sets or {}).get(name.partition("+")[2], ()))
                 for name in _step(progress, names, "build + check")}
        _time(list(built.values()), inputs, runs, progress)
    result = BenchResult(type(getattr(fn, "__self__", fn)).__name__, threads, len(inputs),
                         runs, environment(threads), [r for r, _, _ in built.values()])
    first = next((r for r in result.contenders if r.per_path and not r.optimized), None)
    if first is not None:
        result.paths = {p: st["n"] // runs for p, st in first.per_path.items()}
    if report_dir is not None:
        result.write(report_dir)
    return result


def _bench_selected(model, inputs, selectors, backends, method, threads, runs, report_dir,
                    labels, progress):
    from dycomp.benchmark.subnets import bench_subnets

    ours = [b for b in backends if b in DYCOMP]
    if len(ours) != 1 or _other_contenders(backends):
        raise ValueError(f"with selectors, bench compares eager with one dycomp backend "
                         f"(one of {', '.join(DYCOMP)}); got backends={list(backends)}")
    result = bench_subnets(model, inputs, selectors, backend=ours[0], method=method,
                           threads=threads, runs=runs, labels=labels, progress=progress)
    if report_dir is not None:
        result.write(report_dir)
    return result


def _other_contenders(backends) -> bool:
    """Whether `backends` names contenders other than eager and dycomp's backends (the
    defaults are ignored with selectors: they compare one model, not sub-networks)."""
    return tuple(backends) != DEFAULT and any(
        b not in DYCOMP and b != "eager" for b in backends)


def _step(progress, items, what):
    for item in items:
        if progress is not None:
            progress(f"{what}: {item}")
        yield item


def _build(name, fn, inputs, reference, threads, passes):
    """(ContenderResult, the callable or None, the CompiledModel or None)."""
    from dycomp.benchmark import contenders as cs

    res = ContenderResult(name, optimized=any(p != "no-opt" for p in passes))
    start, rss = time.perf_counter(), _rss_mb()
    try:
        call, compiled = cs.build(name.partition("+")[0], fn, inputs[0], threads, passes)
        call(*inputs[0])  # torch.compile compiles here, at the first call
        res.compile_s = time.perf_counter() - start
        wrong = sum(not cs.same_answer(ref, call(*x)) for x, ref in zip(inputs, reference))
    except Exception as e:  # one contender failing must not stop the bench
        res.status = f"failed: {_reason(e)}"
        return res, None, None
    res.rss_mb = _rss_mb() - rss
    res.wrong = wrong / len(inputs)
    if compiled is not None and compiled.backend in ("onnx", "tvm"):
        with tempfile.TemporaryDirectory() as tmp:
            saved = compiled.save(Path(tmp) / "a.dyc")
            res.artifact_kb = sum(f.stat().st_size for f in saved.rglob("*")) / 1024
    return res, call, compiled


def _time(built: list, inputs, runs: int, progress) -> None:
    """Times every built contender; fills in its statistics (and dycomp's views)."""
    live = [(r, call, cm) for r, call, cm in built if call is not None]
    per_input = {r.name: [[] for _ in inputs] for r, _, _ in live}
    for _, call, _ in live:  # warm-up
        for x in inputs:
            call(*x)
    for k in _step(progress, range(runs), "timing round"):
        # Each contender runs the round's inputs as one block, in an order that rotates:
        # alternating runtimes call by call lets one's spinning worker threads (PyTorch's
        # OpenMP pool, ONNX Runtime's) starve the next one's on 2 cores.
        for r, call, _ in live[k % len(live):] + live[:k % len(live)]:
            for i, x in enumerate(inputs):
                start = time.perf_counter()
                call(*x)
                per_input[r.name][i].append(1e3 * (time.perf_counter() - start))
    for r, _, compiled in live:
        r.times_ms = [t for ts in per_input[r.name] for t in ts]
        r.stats = summarize(r.times_ms)
        if compiled is not None:
            _dycomp_views(r, compiled, inputs, per_input[r.name])


def _dycomp_views(r: ContenderResult, compiled, inputs, per_input: list) -> None:
    """Latency per path, mean time per subgraph call (host-side timers around each
    dispatch) and the share of a call spent in the host program, from one more pass of
    the inputs."""
    program = compiled.program
    executor, spent, calls = program.executor, {}, {}

    def timed(region, *args):
        start = time.perf_counter()
        out = executor(region, *args)
        spent[region] = spent.get(region, 0.0) + time.perf_counter() - start
        calls[region] = calls.get(region, 0) + 1
        return out

    with program.using(timed):
        start = time.perf_counter()
        for x in inputs:
            compiled.run(*x, return_path=True)
        total = time.perf_counter() - start
    # paths named by their decisions (`exit 2`, `5 steps`): a fused subgraph's path is
    # the regions inside it, matched against the source's control flow
    view = compiled.control_view()
    paths = [view.label(compiled.run(*x, return_path=True)[1]) for x in inputs]
    groups: dict[str, list] = {}
    for path, ts in zip(paths, per_input):
        groups.setdefault(path, []).extend(ts)
    r.per_path = {p: summarize(ts) for p, ts in groups.items()}
    r.subgraph_us = {k: 1e6 * spent[k] / calls[k] for k in sorted(spent)}
    r.host_share = max(0.0, 1 - sum(spent.values()) / total) if total else None


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


def environment(threads: int) -> dict:
    import numpy
    import onnxruntime
    import torch

    import dycomp

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "dycomp": dycomp.__version__, "platform": platform.platform()}
