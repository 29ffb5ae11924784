"""How close can ONNX Runtime get to one static graph? The dispatch floor per example.

dycomp lowers every branch it keeps into an ONNX `If` and every loop into a `Loop`,
so a path costs what the static graph of that path costs ("st+dec": the decisions
computed, not dispatched on; see `onnx_vs_eager.py`) plus what ONNX Runtime charges
for each `If` it enters and each `Loop` iteration it runs, beyond the nodes inside.
This script measures those two fixed costs on this machine (a chain of 16 `If`s
against the same 16 nodes without them; a `Loop` of 1 and 33 iterations of one `Add`
against 1 and 33 `Add`s), counts how many of each every input's path enters (ONNX
Runtime's profiler, one run per subgraph call), and prints

    floor = st+dec + ifs * if_us + iterations * iteration_us + (calls - 1) * call_us

next to dycomp's measured path. `floor / st+dec` is what any graph that keeps those
`If`s and iterations costs beyond the static graph, however lean the rest of it is.

Run: python benchmarks/dispatch_floor.py [--paths 5] [name ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto
from onnx import helper as oh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from benchmarks.onnx_vs_eager import (  # noqa: E402
    THREADS,
    _against_static,
    _bare_call,
    _geomean,
)
from dycomp.backends.onnx_backend import all_nodes  # noqa: E402
from dycomp.runtime.onnx_executor import new_session, session_options  # noqa: E402
from examples.zoo import ZOO  # noqa: E402


def _model(nodes, outputs, inits=()) -> bytes:
    """A model of x: float[1, 64]; outputs named `c...` are bools, the rest floats."""
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                      [oh.make_tensor_value_info(o, TensorProto.BOOL if o.startswith("c")
                                                 else TensorProto.FLOAT, None)
                       for o in outputs], list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString()


def _if_chain(n: int, with_if: bool) -> bytes:
    """n decisions on x's mean; each picks Relu or Neg (with_if) or just runs Relu."""
    nodes, cur = [], "x"
    for i in range(n):
        nodes += [oh.make_node("ReduceMean", [cur], [f"m{i}"], keepdims=0),
                  oh.make_node("Greater", [f"m{i}", "zero"], [f"c{i}"])]
        if not with_if:
            nodes.append(oh.make_node("Relu", [cur], [f"y{i}"]))
        else:
            arms = {a: oh.make_graph([oh.make_node(op, [cur], [f"{a}{i}"])], f"{a}{i}", [],
                                     [oh.make_tensor_value_info(f"{a}{i}", TensorProto.FLOAT,
                                                                None)])
                    for a, op in (("t", "Relu"), ("e", "Neg"))}
            nodes.append(oh.make_node("If", [f"c{i}"], [f"y{i}"], then_branch=arms["t"],
                                      else_branch=arms["e"]))
        cur = f"y{i}"
    return _model(nodes, [cur] + [f"c{i}" for i in range(n)],
                  [oh.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])


def _loop(trips: int, with_loop: bool, k: int = 1) -> bytes:
    """`trips` x (k alternating `Mul`/`Add` of x with 1), as a Loop or unrolled."""
    one = oh.make_tensor("one", TensorProto.FLOAT, [], [1.0])

    def chain(x, prefix, n):
        return [oh.make_node("Add" if i % 2 else "Mul", [x if i == 0 else f"{prefix}{i - 1}",
                                                        "one"], [f"{prefix}{i}"])
                for i in range(n)]
    if not with_loop:
        return _model(chain("x", "y", trips * k), [f"y{trips * k - 1}"], [one])
    body = oh.make_graph(
        [oh.make_node("Identity", ["c"], ["c_out"])] + chain("v", "v", k), "body",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []),
         oh.make_tensor_value_info("c", TensorProto.BOOL, []),
         oh.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [oh.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         oh.make_tensor_value_info(f"v{k - 1}", TensorProto.FLOAT, None)])
    nodes = [oh.make_node("Loop", ["trips", "true", "x"], ["y"], body=body)]
    return _model(nodes, ["y"], [one, oh.make_tensor("trips", TensorProto.INT64, [], [trips]),
                                 oh.make_tensor("true", TensorProto.BOOL, [], [True])])


def fixed_costs(rounds: int = 3000) -> dict[str, float]:
    """us per `If` entered, per `Loop` iteration, per node of a `Loop` body beyond what
    the node costs in the main graph (not in the floor: a path that loops pays it, an
    unrolled one would not), and per extra session call (medians of interleaved runs of
    one-thread sessions)."""
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    models = {"if": _if_chain(16, True), "no_if": _if_chain(16, False),
              "loop33": _loop(33, True), "loop1": _loop(1, True),
              "add33": _loop(33, False), "add1": _loop(1, False),
              "body21": _loop(1, True, 21), "add21": _loop(1, False, 21)}
    runs = {k: _bare_call(new_session(m, 1), [x]) for k, m in models.items()}
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    us = {k: 1e6 * statistics.median(v[rounds // 10:]) for k, v in times.items()}
    return {"if_us": (us["if"] - us["no_if"]) / 16,
            "iteration_us": ((us["loop33"] - us["loop1"]) - (us["add33"] - us["add1"])) / 32,
            "loop_node_us": ((us["body21"] - us["loop1"]) - (us["add21"] - us["add1"])) / 20,
            "call_us": us["add1"]}


class CountingExecutor:
    """Wraps an OnnxExecutor: runs every call once more in a profiling session and counts
    the `If` nodes entered and the `Loop` iterations run."""

    def __init__(self, inner):
        self.inner, self.ifs, self.iterations, self.calls = inner, 0, 0, 0

    def __call__(self, name, *args):
        self.calls += 1
        model = self.inner.models[name]
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
        with tempfile.TemporaryDirectory() as d:
            so = session_options(self.inner.threads[name])
            so.enable_profiling, so.profile_file_prefix = True, os.path.join(d, "p")
            sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            sess.run(None, {i.name: np.asarray(a) for i, a in zip(sess.get_inputs(), args)})
            events = json.load(open(sess.end_profiling()))
        ran = collections.Counter(e["name"].removesuffix("_kernel_time") for e in events
                                  if e.get("cat") == "Node"
                                  and e["name"].endswith("_kernel_time"))
        nodes = all_nodes(proto.graph)
        ops = {n.name: n.op_type for n in nodes}
        self.ifs += sum(c for n, c in ran.items() if ops.get(n) == "If")
        for loop in (n for n in nodes if n.op_type == "Loop"):
            body = onnx.helper.get_node_attr_value(loop, "body")
            self.iterations += max((ran[n.name] for n in body.node if n.name), default=0)
        return self.inner(name, *args)


def bench(name: str, paths: int, costs: dict) -> dict:
    mod = ZOO[name]
    model, example = mod.make()
    cm = dycomp.compile(model, example, backend="onnx", check=False, threads=THREADS)
    rows = []
    for inp in mod.sample_inputs(paths):
        arr = tuple(t.numpy() for t in inp)
        (_, decided, path, _), why = _against_static(model, cm, inp, arr, fuse=True)
        if np.isnan(decided):
            return dict(name=name, why=why)
        counter = CountingExecutor(cm.program.executor)
        cm.program.executor = counter
        cm.program.run(*arr)
        cm.program.executor = counter.inner
        extra_us = (counter.ifs * costs["if_us"] + counter.iterations * costs["iteration_us"]
                    + (counter.calls - 1) * costs["call_us"])
        rows.append((decided, path, decided + extra_us / 1e3, counter.ifs, counter.iterations,
                     counter.calls))
    decided, path, floor, ifs, its, calls = zip(*rows)
    return dict(name=name, decided=statistics.median(decided), path=statistics.median(path),
                floor=statistics.median(floor), ifs=statistics.mean(ifs),
                iterations=statistics.mean(its), calls=statistics.mean(calls),
                floor_ratio=_geomean([f / d for d, _, f, *_ in rows]),
                path_ratio=_geomean([p / d for d, p, *_ in rows]),
                path_floor=_geomean([p / f for _, p, f, *_ in rows]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(ZOO))
    ap.add_argument("--paths", type=int, default=5, metavar="K",
                    help="each example on its first K inputs (each compared with the "
                         "static graph of its own path); ratios are geomeans over them")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    costs = fixed_costs()
    print(f"ONNX Runtime {ort.__version__}: If entered {costs['if_us']:.2f} us, Loop iteration "
          f"{costs['iteration_us']:.2f} us (+{costs['loop_node_us']:.2f} us per body node over "
          f"the same node outside a Loop), session call {costs['call_us']:.2f} us", flush=True)
    rows = [bench(n, args.paths, costs) for n in args.names]
    print(f"{'example':<15}{'st+dec ms':>10}{'path ms':>9}{'ifs':>6}{'iters':>7}{'calls':>6}"
          f"{'floor ms':>10}{'floor/st+dec':>13}{'path/st+dec':>12}{'path/floor':>11}")
    done = [r for r in rows if "floor" in r]
    for r in rows:
        if "floor" not in r:
            print(f"{r['name']:<15}  no static graph: {r['why']}")
            continue
        print(f"{r['name']:<15}{r['decided']:>10.3f}{r['path']:>9.3f}{r['ifs']:>6.1f}"
              f"{r['iterations']:>7.1f}{r['calls']:>6.1f}{r['floor']:>10.3f}"
              f"{r['floor_ratio']:>13.2f}{r['path_ratio']:>12.2f}{r['path_floor']:>11.2f}")
    for key, what in (("floor_ratio", "floor / st+dec"), ("path_ratio", "path / st+dec"),
                      ("path_floor", "path / floor")):
        print(f"geomean {what}: {_geomean([r[key] for r in done]):.2f}")


if __name__ == "__main__":
    main()
