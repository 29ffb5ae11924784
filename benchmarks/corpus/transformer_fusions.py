"""Measure ONNX Runtime's transformer fusions on the corpus transformers' ONNX regions.

    python benchmarks/corpus/transformer_fusions.py [--src /work/corpus] [--models a,b]

Per model (each in its own process: the repositories reuse package names) it builds the
case with its adapter, compiles it with the ONNX backend (2 threads), records each
region's inputs on the case's first input, and runs
`onnxruntime.transformers.optimizer.optimize_model` (opt_level 0, model_type "bert" or
"vit", the model's heads and hidden size) on each region's model. It prints per region:
the fused operator counts, the largest absolute difference of the fused model's outputs
from the unfused one's on the recorded inputs, and the median latency of both (ORT
sessions with 2 intra-op threads and graph optimization ALL, runs interleaved).
Measurement only: the compiler does not apply these fusions (issue #21).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("transformer_fusions")

# adapter -> (optimizer model_type, num_heads, hidden_size)
MODELS = {
    "pabee_bert": ("bert", 12, 768),
    "deebert": ("bert", 12, 768),
    "avit": ("vit", 3, 192),
    "dynamicvit": ("vit", 6, 384),
}
REPS = 25


def region_inputs(cm, case, n: int = 5) -> dict[str, dict]:
    """Each region's first inputs on the case's first `n` inputs, as an ONNX feed."""
    ex = cm.program.executor
    seen: dict[str, dict] = {}
    for name, bound in list(ex._bound.items()):
        names = ex._calls[name][2]

        def rec(*a, _bound=bound, _name=name, _names=names):
            seen.setdefault(_name, dict(zip(_names, a)))
            return _bound(*a)

        ex._bound[name] = rec
    for i in range(n):
        args, kwargs = case.make_input(i)
        cm(*args, **kwargs)
    return seen


def session(model: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def interleaved(sessions: list, feed: dict, reps: int) -> list[float]:
    """Median seconds per run of each session, runs alternating between them."""
    feeds = [{i.name: feed[i.name] for i in s.get_inputs()} for s in sessions]
    for s, f in zip(sessions, feeds):
        s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(reps):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def guard_outputs(model):
    """Each graph output produced by an Identity of an inner tensor: the SkipLayerNorm
    fusion otherwise drops a LayerNormalization output that is also a graph output."""
    from onnx import helper

    g = model.graph
    outs = {o.name for o in g.output}
    for n in g.node:
        for k, o in enumerate(n.output):
            if o in outs:
                n.output[k] = o + "_pre"
    for n in list(g.node):
        for k, i in enumerate(n.input):
            if i in outs:
                n.input[k] = i + "_pre"
    g.node.extend(helper.make_node("Identity", [o + "_pre"], [o]) for o in sorted(outs)
                  if o not in {i.name for i in g.input})
    return model


def mask_in_region(model: bytes, feed: dict, seq: int = 128) -> tuple[bytes, dict] | None:
    """The region with its extended attention mask input (1, 1, 1, seq), all zeros on
    these inputs, recomputed inside from a 2-d 0/1 mask as BERT does it:
    `(1 - float(mask[:, None, None])) * -10000`, the pattern ORT's Attention fusion
    matches. None if the region has no such input, or it is not all zeros."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load_from_string(model)
    g = m.graph
    found = [i for i in g.input
             if [d.dim_value for d in i.type.tensor_type.shape.dim] == [1, 1, 1, seq]]
    if not found or np.any(feed[found[0].name]):
        return None
    old = found[0].name
    g.input.remove(found[0])
    g.input.append(helper.make_tensor_value_info("mask2d", TensorProto.INT64, [1, seq]))
    g.initializer.extend([helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
                          helper.make_tensor("ax2", TensorProto.INT64, [1], [2]),
                          helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
                          helper.make_tensor("big", TensorProto.FLOAT, [], [-10000.0])])
    pre = [helper.make_node("Unsqueeze", ["mask2d", "ax1"], ["u1"]),
           helper.make_node("Unsqueeze", ["u1", "ax2"], ["u2"]),
           helper.make_node("Cast", ["u2"], ["c"], to=TensorProto.FLOAT),
           helper.make_node("Sub", ["one", "c"], ["s"]),
           helper.make_node("Mul", ["s", "big"], [old])]
    nodes = pre + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return m.SerializeToString(), {**feed, "mask2d": np.ones((1, seq), np.int64)}


def measure_region(model: bytes, feed: dict, kind: str, heads: int, hidden: int,
                   rewired: tuple[bytes, dict] | None = None) -> dict:
    """Fused op counts, max abs difference and latencies; `rewired`: optimize this
    (model, feed) instead, and compare it with the unfused `model` on `feed`."""
    import numpy as np
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    src, feed2 = rewired or (model, feed)
    opt = optimize_model(guard_outputs(onnx.load_from_string(src)), model_type=kind,
                         num_heads=heads, hidden_size=hidden, opt_level=0)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    fused = opt.model.SerializeToString()
    base, new = session(model), session(fused)
    want = base.run(None, {i.name: feed[i.name] for i in base.get_inputs()})
    got = new.run(None, {i.name: feed2[i.name] for i in new.get_inputs()})
    diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                for a, b in zip(want, got) if np.asarray(a).size), default=0.0)
    ms = interleaved([base, new], {**feed, **feed2}, REPS)
    return {"fused": stats, "max_abs_diff": diff, "unfused_ms": ms[0] * 1e3,
            "fused_ms": ms[1] * 1e3, "nodes": len(onnx.load_from_string(model).graph.node)}


def run_one(name: str, src: Path, mask: bool = False) -> dict:
    """Build, compile and measure one adapter's regions (in this process)."""
    import importlib

    import dycomp

    kind, heads, hidden = MODELS[name]
    case = importlib.import_module(f"benchmarks.corpus.{name}").build(src)
    args, kwargs = case.make_input(0)
    cm = dycomp.compile(case.fn, args, example_kwargs=kwargs, backend="onnx", check=False,
                        threads=2)
    feeds = region_inputs(cm, case)
    out = {}
    for region, model in cm.program.executor.models.items():
        if region not in feeds:
            out[region] = {"skipped": "not run on the first 5 inputs"}
            continue
        rewired = mask_in_region(model, feeds[region]) if mask else None
        if mask and rewired is None:
            continue
        out[region] = measure_region(model, feeds[region], kind, heads, hidden, rewired)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--src", type=Path, default=Path("/work/corpus"))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--mask-in-region", action="store_true",
                   help="BERT layer regions only, their attention mask recomputed inside")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one, a.src, a.mask_in_region)))
        return
    for name in a.models.split(","):
        flag = ["--mask-in-region"] if a.mask_in_region else []
        r = subprocess.run([sys.executable, __file__, "--src", str(a.src), "--one", name, *flag],
                           capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(f"{name}: failed\n{r.stderr[-2000:]}")
            continue
        for region, m in json.loads(lines[-1][7:]).items():
            if "skipped" in m:
                print(f"{name} {region}: skipped ({m['skipped']})")
                continue
            ops = ", ".join(f"{k} {v}" for k, v in sorted(m["fused"].items())) or "none"
            print(f"{name} {region} ({m['nodes']} nodes): {ops}; max |diff| "
                  f"{m['max_abs_diff']:.1e}; unfused {m['unfused_ms']:.2f} ms, fused "
                  f"{m['fused_ms']:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
