"""Where the time of a compiled corpus model goes, and in-process A/B of ORT variants.

    python benchmarks/corpus/profile_regions.py --src /work/corpus MODEL [--inputs 5] [--reps 5]
                                        [--ab VARIANT[,VARIANT...]] [--graphs]

Compiles one corpus adapter (`benchmarks/corpus/<MODEL>.py`) with backend onnx (2
threads) and prints:

- the breakdown of a call: time inside ONNX Runtime's `run` per region (the executor's
  bound region calls wrapped with `time.perf_counter`), the host program around them
  (`program.run` on numpy inputs minus the region time), and the entry's torch <-> numpy
  conversion and checks (`cm(...)` minus `program.run`); medians over the inputs;
- per region: calls per inference, ONNX nodes (top level / all, subgraphs included),
  and with `--graphs` the operator histogram of the graph ONNX Runtime optimized for
  this CPU (`SessionOptions.optimized_model_filepath`), to see what did not fuse;
- with `--ab`, each variant (`VARIANTS`: other session options for every region) run
  through `HostProgram.using` against the compiled executor, calls interleaved A,B,B,A
  over the same inputs, outputs compared, the median ratio B/A (below 1: B faster).

Each model runs in this process; run one model per invocation (the repositories reuse
package names). Threads: 2 (torch and ONNX Runtime).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import dycomp  # noqa: E402
from dycomp.check import compare  # noqa: E402
from dycomp.fastcall import to_torch  # noqa: E402
from dycomp.runtime.onnx_executor import OnnxExecutor, cpu_session, session_options  # noqa: E402
from dycomp.runtime.onnx_layout import all_nodes  # noqa: E402

log = logging.getLogger("dycomp.corpus.profile")
THREADS = 2


def _opts_spin(so: ort.SessionOptions) -> None:
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")


def _opts_basic(so: ort.SessionOptions) -> None:
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def _opts_nomem(so: ort.SessionOptions) -> None:
    so.enable_mem_pattern = False


def _opts_noarena(so: ort.SessionOptions) -> None:
    so.enable_cpu_mem_arena = False


def _opts_gemm_fastmath(so: ort.SessionOptions) -> None:  # NOT exact: bf16 GEMMs (arm64)
    so.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "1")


def _opts_dyn_block(so: ort.SessionOptions) -> None:
    """Dynamic block sizes in the intra-op pool: threads take work as they run, so one
    descheduled thread (a busy machine) holds back less of each parallel loop."""
    so.add_session_config_entry("session.dynamic_block_base", "4")


def _spin_us(us: int):
    def change(so: ort.SessionOptions) -> None:
        so.add_session_config_entry("session.intra_op.spin_duration_us", str(us))
    change.__doc__ = f"Workers spin {us} us after a parallel section, then sleep."
    return change


def _opts_keep_spinning(so: ort.SessionOptions) -> None:
    """Session options without dycomp's `force_spinning_stop` (made from scratch)."""


# name -> (threads per region or None for the compiled plan, change to session options,
#          start from fresh options without dycomp's force_spinning_stop)
VARIANTS = {
    "same": (None, None, False),  # the compiled executor again: the noise floor of A/B
    "t1": (1, None, False),
    "no_spin": (None, _opts_spin, False),
    "spinning": (None, None, False),  # unbounded spinning everywhere (before 2026-12-07)
    "weights_plan": (None, None, False),  # threads by weights alone (before 2026-12-07)
    "spin": (None, None, True),
    "extended": (None, _opts_basic, False),
    "no_mem_pattern": (None, _opts_nomem, False),
    "no_arena": (None, _opts_noarena, False),
    "dyn_block": (None, _opts_dyn_block, False),
    "spin20": (None, _spin_us(20), False),
    "spin100": (None, _spin_us(100), False),
    "spin500": (None, _spin_us(500), False),
    "spin50": (None, _spin_us(50), False),
}


def variant_executor(base: OnnxExecutor, name: str) -> OnnxExecutor:
    """An executor of the same region models with the variant's session options."""
    threads, change, fresh = VARIANTS[name]
    plan = dict(base.threads) if threads is None else dict.fromkeys(base.models, threads)
    if name == "weights_plan":  # the thread plan by weights alone (before 2026-12-07)
        from dycomp.backends.onnx_backend import model_threads

        plan = {r: model_threads(_proto(m), THREADS)
                for r, m in base.models.items()}
    ex = OnnxExecutor.__new__(OnnxExecutor)
    ex.models, ex.threads, ex.traced, ex._traced_calls = dict(base.models), plan, {}, {}
    ex._lock = base._lock
    from dycomp.runtime import onnx_executor as oe

    ex.sessions = {}
    for region, model in ex.models.items():
        long_run = oe.long_running(_proto(model)) and not name.startswith("spin")
        so = _fresh_options(plan[region]) if fresh else session_options(plan[region], long_run)
        if change is not None:
            change(so)
        ex.sessions[region] = oe.new_session(model, plan[region], so)
    ex._calls = {r: oe._call_spec(s) for r, s in ex.sessions.items()}
    ex._bound = {r: oe._bind(c, r) for r, c in ex._calls.items()}
    return ex


def _proto(model) -> onnx.ModelProto:
    return onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)


def _fresh_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


class RegionTimer:
    """Wraps an executor's bound region calls; accumulates seconds and calls per region."""

    def __init__(self, ex: OnnxExecutor):
        self.ex, self.saved = ex, dict(ex._bound)
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        for name, bound in self.saved.items():
            ex._bound[name] = self._wrap(name, bound)

    def _wrap(self, name, bound):
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        def timed(*args):
            t0 = clock()
            out = bound(*args)
            seconds[name] += clock() - t0
            calls[name] += 1
            return out

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def restore(self) -> None:
        self.ex._bound.update(self.saved)


def numpy_inputs(cm, args, kwargs) -> list:
    inputs, _ = cm._inputs(args, kwargs)
    return inputs


def breakdown(cm, case, inputs: list, reps: int) -> dict:
    """Median per call of: the whole `cm(...)`, `program.run` on numpy, region time;
    per region: calls per inference and seconds per inference."""
    ex = cm.program.executor
    arrays = [numpy_inputs(cm, a, k) for a, k in inputs]
    for (a, k) in inputs[:2]:
        cm(*a, **k)
    total, program, ort_s = [], [], []
    per_region: dict[str, list] = collections.defaultdict(list)
    per_calls: dict[str, list] = collections.defaultdict(list)
    timer = RegionTimer(ex)
    try:
        for _ in range(reps):
            for i, ((a, k), arr) in enumerate(zip(inputs, arrays)):
                _reseed(case, i)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    cm(*a, **k)
                    total.append(time.perf_counter() - t0)
                _reseed(case, i)
                timer.reset()
                t0 = time.perf_counter()
                cm.program.run(*arr)
                program.append(time.perf_counter() - t0)
                ort_s.append(sum(timer.seconds.values()))
                for r in ex._bound:
                    per_region[r].append(timer.seconds.get(r, 0.0))
                    per_calls[r].append(timer.calls.get(r, 0))
    finally:
        timer.restore()
    med = statistics.median
    return {"total": med(total), "program": med(program), "ort": med(ort_s),
            "host": med(p - o for p, o in zip(program, ort_s)),
            "regions": {r: (statistics.mean(per_calls[r]), statistics.mean(per_region[r]))
                        for r in per_region}}


def _reseed(case, i: int) -> None:
    if case.reseed is not None:
        case.reseed(i)


def node_counts(model) -> tuple[int, int]:
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    return len(proto.graph.node), sum(1 for _ in all_nodes(proto.graph))


def optimized_ops(model, threads: int) -> collections.Counter:
    """Operator histogram of the graph ONNX Runtime optimizes `model` into on this CPU."""
    with tempfile.TemporaryDirectory() as d:
        so = session_options(threads)
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        proto = onnx.load(so.optimized_model_filepath)
    return collections.Counter(n.op_type for n in all_nodes(proto.graph))


def record_feeds(cm, case, inputs: list) -> dict[str, dict]:
    """Each region's first inputs over `inputs`, as an ONNX Runtime feed."""
    ex = cm.program.executor
    seen: dict[str, dict] = {}
    saved = dict(ex._bound)
    for name, bound in saved.items():
        names = ex._calls[name][2]

        def rec(*a, _bound=bound, _name=name, _names=names):
            seen.setdefault(_name, dict(zip(_names, a)))
            return _bound(*a)

        ex._bound[name] = rec
    try:
        for i, (a, k) in enumerate(inputs):
            _reseed(case, i)
            cm(*a, **k)
    finally:
        ex._bound.update(saved)
    return seen


def ort_profile(model, threads: int, feed: dict, runs: int) -> tuple[float, dict]:
    """ONNX Runtime's own per-node profile of `runs` runs on `feed`: the mean run in
    ms and the ms per run by operator type (kernel time)."""
    import json

    with tempfile.TemporaryDirectory() as d:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "prof")
        s = cpu_session(model, so)  # as the runtime makes it
        feed = {i.name: feed[i.name] for i in s.get_inputs()}
        s.run(None, feed)
        t0 = time.perf_counter()
        for _ in range(runs):
            s.run(None, feed)
        run_ms = (time.perf_counter() - t0) / runs * 1e3
        events = json.load(open(s.end_profiling()))
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3 / (runs + 1)
    return run_ms, dict(by_op)


def report_ort_profile(cm, case, inputs: list, runs: int) -> None:
    ex = cm.program.executor
    for region, feed in record_feeds(cm, case, inputs[:1]).items():
        run_ms, by_op = ort_profile(ex.models[region], ex.threads[region], feed, runs)
        total = sum(by_op.values()) or 1.0
        top = sorted(by_op.items(), key=lambda kv: -kv[1])[:12]
        print(f"  ORT profile {region}: {run_ms:.3f} ms/run, kernels {total:.3f} ms: " + ", ".join(
            f"{k} {v:.3f} ({v / total:.0%})" for k, v in top), flush=True)


def ab(cm, case, inputs: list, variant: str, reps: int) -> dict:
    """Median ratio B/A of per-call time, A the compiled executor and B the variant,
    calls interleaved A,B,B,A over the same inputs; B's outputs compared with A's."""
    prog = cm.program
    a_ex = prog.executor
    b_ex = variant_executor(a_ex, variant)
    arrays = [numpy_inputs(cm, a, k) for a, k in inputs]
    wrong = 0
    for i, arr in enumerate(arrays):
        _reseed(case, i)
        want = prog.run(*arr)
        with prog.using(b_ex):
            _reseed(case, i)
            got = prog.run(*arr)
        wrong += compare(to_torch(want), to_torch(got)) is not None
    ta, tb = [], []

    def once(ex, arr, i, acc):
        with prog.using(ex):
            _reseed(case, i)
            t0 = time.perf_counter()
            prog.run(*arr)
            acc.append(time.perf_counter() - t0)

    for i, arr in enumerate(arrays[:2]):  # warm-up
        once(a_ex, arr, i, [])
        once(b_ex, arr, i, [])
    for _ in range(reps):
        for i, arr in enumerate(arrays):
            once(a_ex, arr, i, ta)
            once(b_ex, arr, i, tb)
            once(b_ex, arr, i, tb)
            once(a_ex, arr, i, ta)
    a, b = statistics.median(ta), statistics.median(tb)
    ratios = [y / x for x, y in zip(ta, tb)]
    return {"a_ms": a * 1e3, "b_ms": b * 1e3, "ratio": b / a,
            "ratio_median_pairs": statistics.median(ratios), "wrong": wrong}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--src", type=Path, default=Path("/work/corpus"))
    p.add_argument("--inputs", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--ab", default="", help=f"variants: {', '.join(VARIANTS)}")
    p.add_argument("--graphs", action="store_true", help="optimized graph op histograms")
    p.add_argument("--ort-profile", type=int, default=0, metavar="RUNS",
                   help="ONNX Runtime's per-node profile of each region, by operator type")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(THREADS)
    from benchmarks.corpus.run import discover, select

    (mod,) = select(discover(), [a.model])  # its NAME (a-vit) or module (avit)
    case = mod.build(a.src)
    inputs = [case.make_input(i) for i in range(a.inputs)]
    args, kwargs = inputs[0]
    _reseed(case, 0)
    t0 = time.perf_counter()
    cm = dycomp.compile(case.fn, args, example_kwargs=kwargs, backend="onnx", threads=THREADS,
                        check=False)
    print(f"{mod.NAME}: compiled in {time.perf_counter() - t0:.1f} s, "
          f"{len(cm.program.executor.models)} regions; threads {cm.program.executor.threads}")
    report_breakdown(cm, case, inputs, a.reps, a.graphs)
    if a.ort_profile:
        report_ort_profile(cm, case, inputs, a.ort_profile)
    for v in [v for v in a.ab.split(",") if v]:
        r = ab(cm, case, inputs, v, a.reps)
        print(f"A/B {v}: A {r['a_ms']:.3f} ms, B {r['b_ms']:.3f} ms, B/A {r['ratio']:.3f} "
              f"(median of pair ratios {r['ratio_median_pairs']:.3f}); "
              f"{r['wrong']}/{len(inputs)} outputs differ; load {os.getloadavg()[0]:.1f}",
              flush=True)
    return 0


def report_breakdown(cm, case, inputs, reps: int, graphs: bool) -> None:
    b = breakdown(cm, case, inputs, reps)
    ms = 1e3
    print(f"per call (median over {len(inputs)} inputs x {reps}): total {b['total'] * ms:.3f} ms"
          f" = program.run {b['program'] * ms:.3f} (ORT run {b['ort'] * ms:.3f}, host "
          f"{b['host'] * ms:.3f}) + entry/conversion {(b['total'] - b['program']) * ms:.3f}")
    ex = cm.program.executor
    for r, (calls, sec) in sorted(b["regions"].items(), key=lambda kv: -kv[1][1]):
        top, every = node_counts(ex.models[r])
        line = (f"  {r}: {calls:.1f} calls/inference, {sec * ms:.3f} ms/inference, "
                f"nodes {top} top / {every} all, threads {ex.threads[r]}")
        print(line, flush=True)
        if graphs and calls:
            ops = optimized_ops(ex.models[r], ex.threads[r])
            print("    optimized: " + ", ".join(f"{k} {v}" for k, v in ops.most_common(14)))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
