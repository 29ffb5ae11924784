"""Capture + cleanup time and graph size for every zoo example (backend torch).

Run: python benchmarks/capture.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from examples.zoo import ZOO  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    print(f"{'example':<22}{'capture s':>10}{'regions':>9}{'branches':>9}{'loops':>7}"
          f"{'ops':>6}")
    for name, mod in ZOO.items():
        for method in ["forward", *getattr(mod, "EXTRA_METHODS", {})]:
            times = []
            for _ in range(3):
                model, example = mod.make()
                t0 = time.perf_counter()
                cm = dycomp.compile(model, example, method=method, check=False)
                times.append(time.perf_counter() - t0)
            s = cm.graph.stats()
            label = name if method == "forward" else f"{name}.{method}"
            print(f"{label:<22}{statistics.median(times):>10.3f}{s['regions']:>9}"
                  f"{s['branches']:>9}{s['loops']:>7}{s['ops']:>6}")


if __name__ == "__main__":
    main()
