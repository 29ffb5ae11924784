"""How fast could any fp32 implementation run each SN-Net stitch id here? (issue #26)

    python benchmarks/snnet_roofline.py --src /work/corpus/SN-Net [--stitches 0 5 9]
        [--reps 5] [--json out.json]

Builds the repository's stitched DeiT Ti/S/B as `benchmarks/snnet.py` does (random
weights, seed 0, least-squares stitching layers) and, per stitch id: the floating-point
operations of one batch-1 224x224 forward (`torch.utils.flop_counter.FlopCounterMode`:
matmuls, convolutions, attention; elementwise work not counted, so the bound is
optimistic), eager's median latency (2 threads, `--reps` calls after a warm-up), and

    bound ms = GFLOP / peak GFLOP/s        max speedup = eager ms / bound ms

with the peak the best fp32 GEMM throughput measured at 2 threads (ONNX Runtime's and
PyTorch's, `benchmarks/corpus/roofline.py`'s shapes, DeiT's added). The geomean of the
max speedups over the ids is the most any fp32 compiler could reach on the ">= 3x eager
per sub-network" target of issue #26, if every GEMM ran at the peak and everything else
were free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from snnet import build  # noqa: E402

from benchmarks.corpus import roofline  # noqa: E402

# DeiT-B and DeiT-S token GEMMs at 197 tokens (qkv, fc1, fc2)
DEIT_SHAPES = [(197, 768, 2304), (197, 768, 3072), (197, 3072, 768), (197, 384, 1152)]


def stitch_row(net, k: int, x: torch.Tensor, reps: int, peak: float) -> dict:
    net.reset_stitch_id(k)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    gflop = counter.get_total_flops() / 1e9
    with torch.no_grad():
        eager_s = roofline._median_time(lambda: net(x), reps)
    bound_ms = gflop / peak * 1e3
    return {"id": k, "gflop": gflop, "eager_ms": eager_s * 1e3, "bound_ms": bound_ms,
            "max_speedup": eager_s * 1e3 / bound_ms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True, help="the SN-Net checkout")
    ap.add_argument("--stitches", nargs="+", type=int, help="stitch ids (default: all)")
    ap.add_argument("--reps", type=int, default=5, help="timed eager calls per id")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(roofline.THREADS)
    peak = roofline.gemm_peak(shapes=roofline.SHAPES + DEIT_SHAPES)
    for r in peak["shapes"]:
        print(f"  GEMM {r['shape']}: torch.mm {r['torch']:.0f}, ONNX Runtime "
              f"{r['onnxruntime']:.0f} GFLOP/s")
    print(f"peak {peak['peak']:.0f} GFLOP/s at {roofline.THREADS} threads", flush=True)
    net = build(a.src, ["tiny", "small", "base"], 4)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows = []
    for k in a.stitches or range(net.num_configs):
        t0 = time.perf_counter()
        rows.append(stitch_row(net, k, x, a.reps, peak["peak"]))
        r = rows[-1]
        print(f"id {k:2d}: {r['gflop']:7.3f} GFLOP, eager {r['eager_ms']:7.2f} ms, bound "
              f"{r['bound_ms']:6.2f} ms, max speedup {r['max_speedup']:.2f}x "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    g = roofline.geomean([r["max_speedup"] for r in rows])
    print(f"geomean max speedup over {len(rows)} ids: {g:.2f}x "
          f"(min {min(r['max_speedup'] for r in rows):.2f}x, "
          f"max {max(r['max_speedup'] for r in rows):.2f}x; "
          f"median eager {statistics.median(r['eager_ms'] for r in rows):.1f} ms)")
    if a.json:
        a.json.write_text(json.dumps({"peak": peak, "ids": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
