"""`dycomp bench` reports for every zoo example (issue "Latency comparison reports").

Per example: every contender (eager, TorchScript, torch.compile, jit.trace, whole-model
ONNX export, dycomp onnx and untuned tvm), the example's `sample_inputs`, 2 threads;
writes OUT/<name>/report.html, report.md, results.json, results.csv and prints one
summary line per example with the wall time it took.

Run: python benchmarks/zoo_report.py [--out benchmarks/reports] [--samples 20]
     [--runs 3] [--backends ...] [name ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from dycomp.benchmark.contenders import CONTENDERS  # noqa: E402
from examples.zoo import ZOO  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", default=sorted(ZOO))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/reports"))
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backends", default=",".join(CONTENDERS))
    args = ap.parse_args(argv)
    backends = tuple(args.backends.split(","))
    for name in args.names:
        mod = ZOO[name]
        model, _ = mod.make(0)
        start = time.perf_counter()
        result = dycomp.bench(model, mod.sample_inputs(args.samples), backends=backends,
                              method=mod.METHOD, runs=args.runs, report_dir=args.out / name)
        cells = []
        for c in result.contenders:
            timing = f"{c.stats['median']:.3f} ms" if c.stats else ""
            cells.append(f"{c.name}: {timing} {c.verdict if c.verdict != 'correct' else ''}"
                         .strip())
        print(f"{name} ({time.perf_counter() - start:.0f} s): " + "; ".join(cells),
              flush=True)


if __name__ == "__main__":
    main()
