"""How fast could each corpus model be in fp32 here? A GEMM roofline per model.

For each corpus model (the adapters of `run.py`): the floating-point operations its eager forward
runs on the timed inputs (`torch.utils.flop_counter.FlopCounterMode`: matmuls,
convolutions, attention; elementwise work not counted, so the bound is optimistic),
the best fp32 GEMM throughput this machine reaches at 2 threads (ONNX Runtime and
PyTorch, on the GEMM shapes these models run and a large square one), and from those
the least time any fp32 implementation could take and the most it could gain over eager:

    bound ms = mean FLOPs per call / peak GFLOP/s      bound speedup = eager ms / bound ms

`--onnx` also compiles each model with dycomp (backend onnx) and reports its share of
the bound (`of bound` = bound ms / dycomp ms). Every contender is timed over the same
inputs as a block, after warm-up, with 2 threads.

    python benchmarks/corpus/roofline.py --src /work/corpus [--onnx] [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.corpus.run import THREADS, _call, _run_isolated, compile_backend, discover, select  # noqa: E402

# (M, K, N): BERT-base and ALBERT at 128 tokens, DeiT-S at 197, ViT-Ti at 197, large square
SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (197, 384, 1536),
          (197, 192, 768), (1024, 1024, 1024)]


def _median_time(fn, reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _ort_matmul(m: int, k: int, n: int):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                          [w])
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[
        helper.make_opsetid("", 17)]).SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((m, k), dtype=np.float32)
    return lambda: sess.run(None, {"x": x})


def gemm_peak(reps: int = 30, shapes=SHAPES) -> dict:
    """GFLOP/s per shape and library; `peak`: the best of all."""
    rows = []
    for m, k, n in shapes:
        flops = 2 * m * k * n
        a, b = torch.randn(m, k), torch.randn(k, n)
        t_torch = _median_time(lambda a=a, b=b: torch.mm(a, b), reps)
        t_ort = _median_time(_ort_matmul(m, k, n), reps)
        rows.append({"shape": f"{m}x{k}x{n}", "torch": flops / t_torch / 1e9,
                     "onnxruntime": flops / t_ort / 1e9})
    peak = max(max(r["torch"], r["onnxruntime"]) for r in rows)
    return {"shapes": rows, "peak": peak}


def model_row(mod, src: Path, n: int, reps: int, peak: float, with_onnx: bool) -> dict:
    case = mod.build(src)
    inputs = [case.make_input(i) for i in range(n)]
    flops = []
    for i, (args, kwargs) in enumerate(inputs):
        counter = FlopCounterMode(display=False)
        with counter:
            _call(case, case.fn, i, args, kwargs)
        flops.append(counter.get_total_flops())
    fns = {"eager": case.fn}
    row = {"model": mod.NAME, "gflop": statistics.fmean(flops) / 1e9}  # block time is a mean
    if with_onnx:
        r = compile_backend(case, "onnx", inputs)
        if r["compiles"]:
            fns["onnx"] = r["fn"]
        else:
            row["error"] = r["error"]

    def block(fn):
        return lambda: [_call(case, fn, i, a, k) for i, (a, k) in enumerate(inputs)]

    for name, fn in fns.items():
        row[f"{name}_ms"] = _median_time(block(fn), reps) / n * 1e3
    row["bound_ms"] = row["gflop"] / peak * 1e3
    row["bound_speedup"] = row["eager_ms"] / row["bound_ms"]
    row["eager_of_bound"] = row["bound_ms"] / row["eager_ms"]
    if "onnx_ms" in row:
        row["onnx_speedup"] = row["eager_ms"] / row["onnx_ms"]
        row["onnx_of_bound"] = row["bound_ms"] / row["onnx_ms"]
    return row


def geomean(xs) -> float:
    return float(np.exp(np.mean(np.log(list(xs))))) if xs else float("nan")


def report(peak: dict, rows: list[dict], console: Console) -> None:
    t = Table(title=f"fp32 GEMM throughput, {THREADS} threads (GFLOP/s)")
    for c in ("shape M x K x N", "torch.mm", "onnxruntime MatMul"):
        t.add_column(c, justify="right")
    for r in peak["shapes"]:
        t.add_row(r["shape"], f"{r['torch']:.1f}", f"{r['onnxruntime']:.1f}")
    console.print(t)
    console.print(f"peak used: {peak['peak']:.1f} GFLOP/s")
    t = Table(title="GEMM roofline per corpus model (fp32, batch 1)")
    cols = ["model", "GFLOP/call", "eager ms", "bound ms", "max speedup", "dycomp ms",
            "dycomp speedup", "dycomp of bound"]
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["model"], f"{r['gflop']:.3f}", f"{r['eager_ms']:.2f}",
                  f"{r['bound_ms']:.3f}", f"{r['bound_speedup']:.2f}x",
                  f"{r['onnx_ms']:.2f}" if "onnx_ms" in r else "-",
                  f"{r['onnx_speedup']:.2f}x" if "onnx_ms" in r else "-",
                  f"{r['onnx_of_bound']:.0%}" if "onnx_ms" in r else "-")
    t.add_row("geomean", "", "", "", f"{geomean([r['bound_speedup'] for r in rows]):.2f}x",
              "", f"{geomean([r['onnx_speedup'] for r in rows if 'onnx_speedup' in r]):.2f}x",
              "")
    console.print(t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="folder holding the repositories")
    p.add_argument("--inputs", type=int, default=10, help="inputs counted and timed")
    p.add_argument("--reps", type=int, default=5, help="timed blocks per contender")
    p.add_argument("--onnx", action="store_true", help="also compile and time dycomp-onnx")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("models", nargs="*")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(THREADS)
    console = Console(width=160)
    mods = [m for m in select(discover(), a.models) if (a.src / m.DIR).is_dir()]
    if a.quiet:  # one model, in a process of its own (see run._run_isolated)
        rows = [model_row(m, a.src, a.inputs, a.reps, a.peak, a.onnx) for m in mods]
        a.json.write_text(json.dumps(rows))
        return 0
    peak = gemm_peak()
    argv = [*(argv if argv is not None else sys.argv[1:]), "--peak", str(peak["peak"])]
    rows = []
    for mod in mods:
        rows.append(_run_isolated(mod, argv, a.models, script=__file__))
        if "gflop" not in rows[-1]:
            console.print(f"[red]{mod.NAME}[/]: {rows.pop()['error']}")
            continue
        console.print(f"  {mod.NAME}: {rows[-1]['gflop']:.3f} GFLOP, eager "
                      f"{rows[-1]['eager_ms']:.2f} ms")
    report(peak, rows, console)
    if a.json:
        a.json.write_text(json.dumps({"peak": peak, "models": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
