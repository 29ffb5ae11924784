"""Exact batching on the zoo: `run_batch` answers == one-request-at-a-time answers.

For every zoo example (backend onnx, default pipeline; `--unfused` keeps decisions on the
host so path-split really splits), 1,000 requests from `sample_inputs` (seeded) are
answered one at a time and in random batches of 1..8 with
`dycomp.runtime.batching.run_batch`; outputs (fp32 within 1e-4) and paths must match.
Prints per example: batching class, how run_batch runs it, mismatches, distinct paths,
the region calls `run_batch` made batched (rows variants, `dycomp/batching_variant.py`:
calls, and the samples they served) and one sample at a time, and the time of both ways.

Run: python benchmarks/batching_exact.py [--requests 1000] [--unfused] [name ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dycomp.runtime.batching import plan  # noqa: E402
from examples.zoo import ZOO  # noqa: E402
from tests.batching_zoo import batched_vs_single, requests, zoo_artifact  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(ZOO))
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--unfused", action="store_true", help="compile with fuse_branches=False")
    args = ap.parse_args(argv)
    print(f"{'example':14} {'class':12} {'run_batch':9} {'requests':>8} {'wrong':>5} "
          f"{'paths':>5} {'batches':>7} {'batched calls':>13} {'(samples)':>9} "
          f"{'single calls':>12} {'one-at-a-time s':>15} {'run_batch s':>11}")
    failed = 0
    for name in args.names:
        _, art = zoo_artifact(name, fuse=not args.unfused)
        reqs = requests(name, args.requests)
        times: list[float] = []
        stats: dict = {}
        bad, paths, batches = batched_vs_single(art, reqs, seed=0, times=times, stats=stats)
        failed += len(bad)
        print(f"{name:14} {art.batching['class']:12} {plan(art)[0]:9} {len(reqs):8} "
              f"{len(bad):5} {paths:5} {batches:7} {stats.get('batched_calls', 0):13} "
              f"{stats.get('batched_samples', 0):9} {stats.get('single_calls', 0):12} "
              f"{times[0]:15.2f} {times[1]:11.2f}", flush=True)
    print("all answers equal" if not failed else f"{failed} answers differ")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
