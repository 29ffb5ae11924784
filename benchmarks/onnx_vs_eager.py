"""dycomp + ONNX Runtime vs eager PyTorch on the example zoo (batch 1, 2 threads).

Per example: eager median ms, dycomp-onnx median ms, speedup, region calls on the
path, host overhead per transition, the same path compiled as ONE static ONNX graph
(the lower bound for dispatch), compile time and artifact size. Eager and dycomp calls
are interleaved input by input; every contender runs with 2 threads.

Run: python benchmarks/onnx_vs_eager.py [--inputs 40] [--rounds 5] [name ...]
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from examples.zoo import ZOO  # noqa: E402

THREADS = 2


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


class _TensorOutputs(torch.nn.Module):
    """The model with its non-tensor outputs dropped (tracing refuses them)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        leaves = torch.utils._pytree.tree_flatten(self.model(*args))[0]
        return tuple(t for t in leaves if isinstance(t, torch.Tensor))


def _static_path_session(model, inputs):
    """The path this input takes, traced into one static ONNX graph (None if it fails)."""
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_TensorOutputs(model).eval(), inputs, buf, dynamo=False,
                              opset_version=17)
    except Exception as e:  # tracing refuses some outputs (python lists, ints)
        return None, f"{type(e).__name__}"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feed = {n: t.numpy() for n, t in zip(names, inputs)}
    return (lambda: sess.run(None, feed)), ""


class CallTimer:
    """Wraps an executor to measure time spent inside region calls."""

    def __init__(self, inner):
        self.inner, self.inside, self.calls = inner, 0.0, 0

    def __call__(self, name, *args):
        t0 = time.perf_counter()
        out = self.inner(name, *args)
        self.inside += time.perf_counter() - t0
        self.calls += 1
        return out


def bench(name, mod, n_inputs, rounds, threads=None, fuse=True):
    model, example = mod.make()
    t0 = time.perf_counter()
    cm = dycomp.compile(model, example, backend="onnx", check=False, threads=threads,
                        fuse_branches=fuse)
    compile_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        cm.save(Path(d) / "a")
        size = sum(p.stat().st_size for p in (Path(d) / "a").rglob("*") if p.is_file())
    inputs = mod.sample_inputs(n_inputs)
    arrays = [tuple(t.numpy() for t in inp) for inp in inputs]
    eager, comp = [], []
    with torch.no_grad():
        for _ in range(2):  # warm-up
            for inp, arr in zip(inputs, arrays):
                model(*inp)
                cm.program.run(*arr)
        for _ in range(rounds):
            for inp, arr in zip(inputs, arrays):
                eager.append(_timed(model, *inp)[0])
                comp.append(_timed(cm.program.run, *arr)[0])
    # transitions and host overhead on the first input
    timer = CallTimer(cm.program.executor)
    cm.program.executor = timer
    runs = []
    for _ in range(50):
        timer.inside, timer.calls = 0.0, 0
        runs.append((_timed(cm.program.run, *arrays[0])[0], timer.inside, timer.calls))
    cm.program.executor = timer.inner
    total, inside, calls = sorted(runs)[len(runs) // 2]
    static_fn, why = _static_path_session(model, inputs[0])
    static_ms = path_ms = float("nan")
    if static_fn is not None:
        for _ in range(20):
            static_fn()
        static_ms = 1e3 * statistics.median(_timed(static_fn)[0] for _ in range(200))
        path_ms = 1e3 * statistics.median(_timed(cm.program.run, *arrays[0])[0]
                                          for _ in range(200))
    e, c = 1e3 * statistics.median(eager), 1e3 * statistics.median(comp)
    return dict(name=name, eager=e, dycomp=c, speedup=e / c, calls=calls,
                host_us=1e6 * (total - inside) / max(calls, 1),
                dispatch_us=1e6 * (path_ms - static_ms) / 1e3 / max(calls, 1)
                if static_fn else float("nan"),
                static=static_ms, path=path_ms, ratio=path_ms / static_ms if static_fn else
                float("nan"), compile=compile_s, size=size / 1024, why=why)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(ZOO))
    p.add_argument("--inputs", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-fuse", action="store_true", help="keep every branch on the host")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per dycomp subgraph (default: dycomp's choice)")
    a = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    rows = [bench(n, ZOO[n], a.inputs, a.rounds, a.threads, not a.no_fuse) for n in a.names]
    hdr = (f"{'example':<15}{'eager ms':>9}{'dycomp ms':>10}{'speedup':>8}{'calls':>6}"
           f"{'host us':>8}{'disp us':>8}{'static ms':>10}{'path ms':>8}{'path/st':>8}"
           f"{'compile s':>10}{'KiB':>8}")
    print(hdr)
    for r in rows:
        print(f"{r['name']:<15}{r['eager']:>9.3f}{r['dycomp']:>10.3f}{r['speedup']:>8.2f}"
              f"{r['calls']:>6}{r['host_us']:>8.1f}{r['dispatch_us']:>8.1f}{r['static']:>10.3f}"
              f"{r['path']:>8.3f}{r['ratio']:>8.2f}{r['compile']:>10.2f}{r['size']:>8.0f}"
              + (f"  static: {r['why']}" if r["why"] else ""))
    geo = math.exp(statistics.mean(math.log(r["speedup"]) for r in rows))
    ratios = [r["ratio"] for r in rows if not math.isnan(r["ratio"])]
    print(f"\ngeomean speedup vs eager: {geo:.2f}x; slowest: "
          f"{min(r['speedup'] for r in rows):.2f}x")
    if ratios:
        print(f"geomean path / one-static-graph: "
              f"{math.exp(statistics.mean(math.log(x) for x in ratios)):.2f} "
              f"({len(ratios)} examples exportable as one static graph)")


if __name__ == "__main__":
    main()
