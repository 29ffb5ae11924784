"""Throughput of `run_batch` at batch 8 against one request at a time, per zoo example.

Regions with a rows variant (`dycomp/batching_variant.py`) run once per group of samples;
the rest once per sample. Both ways answer the same requests (`sample_inputs`, seeded) on
the same loaded artifact (backend onnx, 2 threads; `--unfused` keeps the decisions on the
host, where the splitter sees them); each is timed `--repeat` times, alternating: the
medians of both (requests per second), and the median of the paired ratios (one at a
time / batched: > 1, batching is faster; pairs run back to back, so a shared machine's
load drifts less between them). Compare the ratios of one run, not seconds across runs.

Run: python benchmarks/batching_rows_speed.py [--requests 400] [--repeat 5] [--unfused] [name ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dycomp.runtime.batching import plan, run_batch  # noqa: E402
from examples.zoo import ZOO  # noqa: E402
from tests.batching_zoo import requests, zoo_artifact  # noqa: E402


def _one(art, reqs) -> float:
    t = time.perf_counter()
    for r in reqs:
        art.run(*r)
    return time.perf_counter() - t


def _batched(art, reqs, batch: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(reqs), batch):
        run_batch(art, reqs[i:i + batch])
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(ZOO))
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--unfused", action="store_true", help="compile with fuse_branches=False")
    args = ap.parse_args(argv)
    print(f"{'example':14} {'run_batch':9} {'variants':>8} {'one req/s':>9} "
          f"{'batch req/s':>11} {'ratio':>6}")
    for name in args.names:
        _, art = zoo_artifact(name, fuse=not args.unfused)
        reqs = requests(name, args.requests)
        run_batch(art, reqs[:args.batch])  # warm: sessions and the variants' sessions
        one, batched = [], []
        for _ in range(args.repeat):
            one.append(_one(art, reqs))
            batched.append(_batched(art, reqs, args.batch))
        n_var = sum("rows_variant" in e for e in art.batching.get("subgraphs", {}).values())
        a, b = statistics.median(one), statistics.median(batched)
        ratio = statistics.median(x / y for x, y in zip(one, batched))
        print(f"{name:14} {plan(art)[0]:9} {n_var:8} {len(reqs) / a:9.0f} "
              f"{len(reqs) / b:11.0f} {ratio:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
