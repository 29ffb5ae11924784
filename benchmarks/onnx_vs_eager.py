"""dycomp + ONNX Runtime vs eager PyTorch on the example zoo (batch 1, 2 threads).

Per example: eager median ms, dycomp-onnx median ms (the host program on numpy arrays),
speedup, `cm(x)` with torch tensors (what a user times) and its speedup, region calls on the
path, host overhead per transition, the same path compiled as ONE static ONNX graph
(the lower bound for dispatch), compile time and artifact size. Eager and dycomp calls
are interleaved input by input; every contender runs with 2 threads.

The static graph is the first input's path (with `--paths K`, each of the first K inputs'
paths, the ratios then geometric means over them) traced by `torch.onnx.export(dynamo=False)`,
in two forms: "st+dec" keeps every value the Python code reads to decide (`bool(t)`,
`t.item()`, `float(t)`, ...) as an extra output, so it computes the same decisions as
the dynamic model without dispatching on them: the lower bound for dispatch, which the
path/st+dec ratio compares against. "static" is the bare trace, where tracing folds
those decisions into constants and drops the work that computed them. "no-If ms"
splits the gap: dycomp's own one-call graph with every `If` node replaced by the arm
this input takes (conditions kept as outputs; nan when the graph holds a `Loop` or is
more than one subgraph), so path - no-If is what the `If` nodes cost. Both static
graphs and the no-If graph run in sessions configured as dycomp configures its own
(intra-op threads by its rule, workers stop spinning after each run) and are called as
dycomp calls its sessions (the C++ `run`, not `InferenceSession.run`, whose feed checks
cost 5-8 us a call here, with dycomp's run options: a run given none costs 3-7 us
more). The four run one call each per round, in a new random order every round: in a
fixed order the static graph ran right before st+dec, its near twin,
and sped it up by ~8 % on the small examples (benchmarks/README.md).

Run: python benchmarks/onnx_vs_eager.py [--inputs 40] [--rounds 5] [--paths 1] [name ...]
"""

from __future__ import annotations

import argparse
import io
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from dycomp.backends.onnx_backend import all_nodes, model_threads  # noqa: E402
from dycomp.passes import DecisionRecorder  # noqa: E402
from dycomp.runtime.onnx_executor import RUN_OPTIONS, new_session  # noqa: E402
from examples.zoo import ZOO  # noqa: E402

THREADS = 2


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


class _TensorOutputs(torch.nn.Module):
    """The model with its non-tensor outputs dropped (tracing refuses them); with
    `decisions`, the tensors its Python code reads are outputs too."""

    def __init__(self, model, decisions: bool):
        super().__init__()
        self.model, self.decisions = model, decisions

    def forward(self, *args):
        with DecisionRecorder() as rec:  # each decision's margin, or the value read
            out = self.model(*args)
        leaves = torch.utils._pytree.tree_flatten(out)[0]
        kept = tuple(d.value for d in rec.decisions) if self.decisions else ()
        return tuple(t for t in leaves if isinstance(t, torch.Tensor)) + kept


def _static_path_session(model, inputs, decisions: bool):
    """The path this input takes, traced into one static ONNX graph (None if it fails)."""
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_TensorOutputs(model, decisions).eval(), inputs, buf,
                              dynamo=False, opset_version=17)
    except Exception as e:  # tracing refuses some outputs (python lists, ints)
        return None, f"{type(e).__name__}"
    return _bare_call(_session(buf.getvalue()), [t.numpy() for t in inputs]), ""


def _bare_call(sess, arrays):
    """`sess` run on `arrays` through the C++ run dycomp's executor calls, with the run
    options it passes (the Python `InferenceSession.run` re-checks its feed on every
    call: 5-8 us here; a run given no options makes its own: 3-7 us)."""
    feed = {i.name: a for i, a in zip(sess.get_inputs(), arrays)}
    outputs = [o.name for o in sess.get_outputs()]
    run = sess._sess.run
    return lambda: run(outputs, feed, RUN_OPTIONS)


def _session(model: bytes):
    """A session configured as dycomp configures its own (threads by its rule, workers
    stop spinning after each run), so that only the dispatch differs."""
    return new_session(model, model_threads(onnx.load_from_string(model), THREADS))


def _taken_arms_session(cm, arrays):
    """dycomp's one-subgraph model with each `If` replaced by the arm `arrays` takes."""
    models = cm.program.executor.models
    if len(models) != 1:
        return None
    m = onnx.load_from_string(next(iter(models.values())))
    if any(n.op_type == "Loop" for n in all_nodes(m.graph)):
        return None
    feed = {i.name: a for i, a in zip(m.graph.input, arrays)}
    conds = []
    while ifs := [n for n in m.graph.node if n.op_type == "If"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        probe.graph.output.extend(onnx.ValueInfoProto(name=n.input[0]) for n in ifs)
        taken = _session(probe.SerializeToString()).run([n.input[0] for n in ifs], feed)
        nodes = []
        for n in m.graph.node:
            if n.op_type != "If":
                nodes.append(n)
                continue
            arm = onnx.helper.get_node_attr_value(
                n, "then_branch" if np.asarray(taken[ifs.index(n)]).item() else "else_branch")
            m.graph.initializer.extend(arm.initializer)
            nodes += arm.node
            nodes += [onnx.helper.make_node("Identity", [o.name], [out])
                      for o, out in zip(arm.output, n.output)]
            conds.append(n.input[0])
        del m.graph.node[:]
        m.graph.node.extend(nodes)
    m.graph.output.extend(onnx.ValueInfoProto(name=c) for c in dict.fromkeys(conds))
    return _bare_call(_session(m.SerializeToString()), arrays)


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


def bench(name, mod, n_inputs, rounds, threads=None, fuse=True, paths=1):
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
    eager, comp, call = [], [], []  # call: what a user times, cm(torch tensors)
    with torch.no_grad():
        for _ in range(2):  # warm-up
            for inp, arr in zip(inputs, arrays):
                model(*inp)
                cm.program.run(*arr)
                cm(*inp)
        for _ in range(rounds):
            for inp, arr in zip(inputs, arrays):
                eager.append(_timed(model, *inp)[0])
                comp.append(_timed(cm.program.run, *arr)[0])
                call.append(_timed(cm, *inp)[0])
    # transitions and host overhead on the first input
    timer = CallTimer(cm.program.executor)
    cm.program.executor = timer
    runs = []
    for _ in range(50):
        timer.inside, timer.calls = 0.0, 0
        runs.append((_timed(cm.program.run, *arrays[0])[0], timer.inside, timer.calls))
    cm.program.executor = timer.inner
    total, inside, calls = sorted(runs)[len(runs) // 2]
    per_input = [_against_static(model, cm, inputs[i], arrays[i], fuse)
                 for i in range(min(paths, len(inputs)))]
    why = per_input[0][1]
    ms = [m for m, _ in per_input]  # (static, st+dec, path, no-If) per input
    static_ms, decided_ms, path_ms, arms_ms = (statistics.median(col) for col in zip(*ms))
    e, c = 1e3 * statistics.median(eager), 1e3 * statistics.median(comp)
    cx = 1e3 * statistics.median(call)
    return dict(name=name, eager=e, dycomp=c, speedup=e / c, call=cx, call_speedup=e / cx,
                calls=calls,
                host_us=1e6 * (total - inside) / max(calls, 1),
                dispatch_us=1e3 * (path_ms - decided_ms) / max(calls, 1),
                static=static_ms, decided=decided_ms, path=path_ms, arms=arms_ms,
                ratio=_geomean([p / d for _, d, p, _ in ms]),
                folded_ratio=_geomean([p / s for s, _, p, _ in ms]),
                compile=compile_s, size=size / 1024, why=why)


def _against_static(model, cm, inp, arr, fuse):
    """ms of the bare trace, st+dec, dycomp and its no-If graph on one input (nan where
    a form cannot be built), timed interleaved."""
    static_fn, why = _static_path_session(model, inp, decisions=False)
    decided_fn, _ = _static_path_session(model, inp, decisions=True)
    arms_fn = _taken_arms_session(cm, arr) if fuse else None
    if static_fn is None or decided_fn is None:
        return (float("nan"),) * 4, why
    contenders = [static_fn, decided_fn, lambda: cm.program.run(*arr)]
    contenders += [arms_fn] if arms_fn else []
    times = [[] for _ in range(4)]
    order, rng = list(range(len(contenders))), random.Random(0)
    for _ in range(220):  # interleaved in a new order each round; the first 20 warm up
        rng.shuffle(order)
        for i in order:
            times[i].append(_timed(contenders[i])[0])
    return tuple(1e3 * statistics.median(ts[20:]) if ts else float("nan")
                 for ts in times), why


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.mean(math.log(x) for x in xs))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(ZOO))
    p.add_argument("--inputs", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-fuse", action="store_true", help="keep every branch on the host")
    p.add_argument("--paths", type=int, default=1, metavar="K",
                   help="compare with one static graph on each of the first K inputs (each "
                        "its own path): ms columns are medians over them, ratios geomeans")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per dycomp subgraph (default: dycomp's choice)")
    a = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    rows = [bench(n, ZOO[n], a.inputs, a.rounds, a.threads, not a.no_fuse, a.paths)
            for n in a.names]
    hdr = (f"{'example':<15}{'eager ms':>9}{'dycomp ms':>10}{'speedup':>8}{'cm(x) ms':>9}"
           f"{'cm(x)/e':>8}{'calls':>6}"
           f"{'host us':>8}{'disp us':>8}{'static ms':>10}{'st+dec ms':>10}{'path ms':>8}"
           f"{'no-If ms':>9}{'path/st':>8}{'path/st+dec':>12}"
           f"{'compile s':>10}{'KiB':>8}")
    print(hdr)
    for r in rows:
        print(f"{r['name']:<15}{r['eager']:>9.3f}{r['dycomp']:>10.3f}{r['speedup']:>8.2f}"
              f"{r['call']:>9.3f}{r['call_speedup']:>8.2f}{r['calls']:>6}{r['host_us']:>8.1f}{r['dispatch_us']:>8.1f}{r['static']:>10.3f}"
              f"{r['decided']:>10.3f}{r['path']:>8.3f}{r['arms']:>9.3f}{r['folded_ratio']:>8.2f}"
              f"{r['ratio']:>12.2f}{r['compile']:>10.2f}{r['size']:>8.0f}"
              + (f"  static: {r['why']}" if r["why"] else ""))
    geo = _geomean([r["speedup"] for r in rows])
    print(f"\ngeomean speedup vs eager: {geo:.2f}x; slowest: "
          f"{min(r['speedup'] for r in rows):.2f}x")
    print(f"cm(torch tensors) vs eager: geomean {_geomean([r['call_speedup'] for r in rows]):.2f}x"
          f"; slowest: {min(r['call_speedup'] for r in rows):.2f}x")
    for key, what in (("ratio", "one static graph computing the decisions (st+dec)"),
                      ("folded_ratio", "the bare trace, decisions folded (static)")):
        ratios = [r[key] for r in rows if not math.isnan(r[key])]
        if ratios:
            print(f"geomean path / {what}: "  # 3 places: the target is <= 1.10
                  f"{_geomean(ratios):.3f} "
                  f"({len(ratios)} examples exportable as one static graph)")
    split = [r for r in rows if not math.isnan(r["arms"]) and not math.isnan(r["decided"])]
    if split:  # the If nodes' own cost, and what is left without them
        print(f"geomean path / no-If: {_geomean([r['path'] / r['arms'] for r in split]):.2f}"
              f", no-If / st+dec: {_geomean([r['arms'] / r['decided'] for r in split]):.2f}"
              f" ({len(split)} examples with a no-If graph: "
              f"{', '.join(r['name'] for r in split)})")


if __name__ == "__main__":
    main()
