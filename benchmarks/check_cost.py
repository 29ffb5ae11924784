"""Compile time of every zoo example without the self-check and with the path-covering
check (`dycomp/check_paths.py`), and the coverage it reports.

    python benchmarks/check_cost.py [--backend onnx] [NAME ...]
"""

from __future__ import annotations

import argparse
import time

import dycomp
from examples.zoo import ZOO


def _timed(model, example, backend: str, check: bool):
    start = time.perf_counter()
    cm = dycomp.compile(model, example, backend=backend, check=check)
    return time.perf_counter() - start, cm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnx")
    p.add_argument("names", nargs="*", default=list(ZOO))
    ns = p.parse_args()
    print(f"{'example':14} {'no check s':>10} {'check s':>8} {'ratio':>6}  coverage")
    for name in ns.names:
        model, example = ZOO[name].make()
        plain, _ = _timed(model, example, ns.backend, False)
        checked, cm = _timed(model, example, ns.backend, True)
        print(f"{name:14} {plain:10.2f} {checked:8.2f} {checked / plain:6.2f}  "
              f"{cm.check.summary()}", flush=True)


if __name__ == "__main__":
    main()
