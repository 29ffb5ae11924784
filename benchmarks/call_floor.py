"""The per-call floor: what `cm(x)` costs on top of ONNX Runtime (issue #23).

    python benchmarks/call_floor.py [--rounds 201] [--calls 20] [--ort] [--profile]

Three one-subgraph models (each compiles into one fused ONNX graph with one `If`): a
12x12 MLP with one branch, a 256-wide one, and a small CNN. Per model, the median time
per call of, interleaved (every round runs each contender `--calls` times, in a new
random order), with 2 threads for PyTorch and dycomp's thread rule for the session:

- `sess.run`: the bare `InferenceSession.run(None, feed)` of the compiled graph;
- `runtime`: a `dycomp.runtime.load(...)` artifact called with a numpy array;
- `cm(np)` / `cm(torch)`: the CompiledModel called with a numpy array / a torch tensor;
- `eager`: the PyTorch model under `torch.no_grad()`;
- `general`: `cm.run(torch tensor)`, the general path (pytree flattening, checks by
  string, a copy per output) that every call took before the specialised entry.

`--ort` adds ONNX Runtime's own choices on the same graph: intra-op threads 1 vs 2,
graph optimization level (basic, extended, all), the C++ `run` dycomp binds,
`run_with_ort_values` (input OrtValue built per call) and I/O binding. `--profile`
prints where `cm(torch)` spends its time (cProfile, top functions).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
import dycomp.runtime  # noqa: E402
from dycomp.runtime.onnx_executor import RUN_OPTIONS, session_options  # noqa: E402

THREADS = 2


class SmallMLP(nn.Module):
    """Two Linear(w, w) layers, the second only when the first's output sums positive."""

    def __init__(self, width: int = 12):
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.sum() > 0:
            h = self.b(h)
        return h


class SmallCNN(nn.Module):
    """Two 3x3 convolutions on a 3x32x32 image, the second one gated by the first's mean."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        if h.mean() > 0.1:
            h = torch.relu(self.c2(h)) + h
        return self.fc(h.mean(dim=(2, 3)))


MODELS = {"mlp12": (lambda: SmallMLP(12), (1, 12)), "mlp256": (lambda: SmallMLP(256), (1, 256)),
          "cnn": (SmallCNN, (1, 3, 32, 32))}


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def interleaved(fns: dict, rounds: int, calls: int, seed: int = 0) -> dict[str, float]:
    """Median microseconds per call of each contender, rounds run in random orders."""
    rng, times = random.Random(seed), {k: [] for k in fns}
    for f in fns.values():  # warm-up
        per_call_us(f, 20)
    for _ in range(rounds):
        order = list(fns)
        rng.shuffle(order)
        for k in order:
            times[k].append(per_call_us(fns[k], calls))
    return {k: statistics.median(v) for k, v in times.items()}


def setup(name: str, d: Path):
    """(eager model, torch input, CompiledModel, runtime artifact, its session)."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape)
    cm = dycomp.compile(model, (x,), backend="onnx")
    if len(cm.graph.regions) != 1:
        raise SystemExit(f"{name}: {len(cm.graph.regions)} subgraphs, expected one")
    rt = dycomp.runtime.load(cm.save(d / name), threads=THREADS)
    (sess,) = cm.executor.sessions.values()
    return model, x, cm, rt, sess


def floor_table(names, rounds: int, calls: int) -> None:
    cols = ["sess.run", "runtime", "cm(np)", "cm(torch)", "eager", "general"]
    print(f"{'model':<8}{'threads':>8}" + "".join(f"{c:>11}" for c in cols)
          + f"{'np-sess':>9}{'torch-sess':>11}{'eager/cm':>9}   (us per call, medians)")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in names:
            model, x, cm, rt, sess = setup(name, Path(tmp))
            m = interleaved(contenders(model, x, cm, rt, sess), rounds, calls)
            threads = next(iter(cm.executor.threads.values()))
            print(f"{name:<8}{threads:>8}" + "".join(f"{m[c]:>11.2f}" for c in cols)
                  + f"{m['cm(np)'] - m['sess.run']:>+9.2f}"
                  + f"{m['cm(torch)'] - m['sess.run']:>+11.2f}"
                  + f"{m['eager'] / m['cm(torch)']:>9.2f}")


def contenders(model, x, cm, rt, sess) -> dict:
    """The five ways to run one model, as functions of nothing."""
    xn = x.numpy()
    feed = {sess.get_inputs()[0].name: xn}
    return {"sess.run": lambda: sess.run(None, feed), "runtime": lambda: rt(xn),
            "cm(np)": lambda: cm(xn), "cm(torch)": lambda: cm(x), "eager": lambda: model(x),
            "general": lambda: cm.run(x)}


def ort_table(names, rounds: int, calls: int) -> None:
    """ONNX Runtime's own options on each model's fused graph."""
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            _, x, cm, _, _ = setup(name, Path(tmp))
            (model,) = cm.executor.models.values()
            xn, fns = x.numpy(), {}
            for threads in (1, 2):
                for level, value in levels.items():
                    so = session_options(threads)
                    so.graph_optimization_level = value
                    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
                    fns[f"t{threads}/{level}"] = _cpp_run(s, xn)
                s = ort.InferenceSession(model, session_options(threads),
                                         providers=["CPUExecutionProvider"])
                fns[f"t{threads}/ortvalues"] = _ort_values_run(s, xn)
                fns[f"t{threads}/iobinding"] = _binding_run(s, xn)
            m = interleaved(fns, rounds, calls)
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()) + " us")


def _cpp_run(s, xn):
    inp, outs, run = s.get_inputs()[0].name, [o.name for o in s.get_outputs()], s._sess.run
    return lambda: run(outs, {inp: xn}, RUN_OPTIONS)


def _ort_values_run(s, xn):
    inp, outs = s.get_inputs()[0].name, [o.name for o in s.get_outputs()]
    run, ortvalue = s._sess.run_with_ort_values, ort.OrtValue.ortvalue_from_numpy

    def call():
        res = run({inp: ortvalue(xn)._ortvalue}, outs, RUN_OPTIONS)
        return [v.numpy() for v in res]
    return call


def _binding_run(s, xn):
    inp, outs = s.get_inputs()[0].name, [o.name for o in s.get_outputs()]

    def call():
        b = s.io_binding()
        b.bind_cpu_input(inp, xn)
        for o in outs:
            b.bind_output(o)
        s.run_with_iobinding(b, RUN_OPTIONS)
        return b.copy_outputs_to_cpu()
    return call


def profile(name: str, calls: int = 20000) -> None:
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        _, x, cm, _, _ = setup(name, Path(tmp))
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            cm(x)
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=201)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--ort", action="store_true", help="also ONNX Runtime's own options")
    ap.add_argument("--profile", action="store_true", help="cProfile of cm(torch), mlp12")
    ap.add_argument("models", nargs="*", default=list(MODELS))
    a = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    np.random.seed(0)
    floor_table(a.models, a.rounds, a.calls)
    if a.ort:
        ort_table(a.models, a.rounds, a.calls)
    if a.profile:
        profile(a.models[0])


if __name__ == "__main__":
    main()
