"""Compile time of every zoo example without the self-check and with the path-covering
check (`dycomp/check_paths.py`), and the coverage it reports.

    python benchmarks/check_cost.py [--backend onnx] [--repeat 1] [--parts] [NAME ...]

Prints wall and CPU seconds (process time: all threads) and their ratios, the fastest
of `--repeat` compiles each, after one warm-up compile. On a shared machine the CPU
ratio is the steadier figure: wall time there mostly measures waiting for a core (and
PyTorch's two intra-op threads waiting for each other). `--parts`: compile without the
check, then on that compiled model the former random-input check (`differential_check`:
the example and 8 random inputs) and the path-covering check, each timed alone.
"""

from __future__ import annotations

import argparse
import time

import dycomp
from examples.zoo import ZOO


def _timed(model, example, backend: str, check: bool, repeat: int):
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        cm = dycomp.compile(model, example, backend=backend, check=check)
        best = min(best[0], time.perf_counter() - wall), min(best[1], time.process_time() - cpu)
    return best, cm


def _parts(name: str, backend: str) -> None:
    from dycomp.check import differential_check
    from dycomp.check_paths import path_check

    model, example = ZOO[name].make()

    def timed(run):
        wall = time.perf_counter()
        out = run()
        return time.perf_counter() - wall, out

    t0, cm = timed(lambda: dycomp.compile(model, example, backend=backend, check=False))
    t1, _ = timed(lambda: differential_check(model.forward, cm, example, {}))
    t2, report = timed(lambda: path_check(model.forward, cm, example, {}, more=14))
    print(f"{name:14} {t0:8.2f} {t1:10.2f} {t2:8.2f} {(t0 + t2) / t0:6.2f}  "
          f"{report.summary()}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="onnx")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--parts", action="store_true")
    p.add_argument("names", nargs="*", default=list(ZOO))
    ns = p.parse_args()
    if ns.parts:
        dycomp.compile(*ZOO["nested_if"].make(), backend=ns.backend)  # warm-up
        print(f"{'example':14} {'compile':>8} {'old check':>10} {'path chk':>8} {'ratio':>6}"
              "  coverage (wall seconds)")
        for name in ns.names:
            _parts(name, ns.backend)
        return
    print(f"{'example':14} {'wall s':>6} {'+check':>7} {'ratio':>5} {'cpu s':>6} {'+check':>7} "
          f"{'ratio':>5}  coverage")
    model, example = ZOO[ns.names[0]].make()
    dycomp.compile(model, example, backend=ns.backend, check=True)  # warm-up: imports, caches
    for name in ns.names:
        model, example = ZOO[name].make()
        (w0, c0), _ = _timed(model, example, ns.backend, False, ns.repeat)
        (w1, c1), cm = _timed(model, example, ns.backend, True, ns.repeat)
        print(f"{name:14} {w0:6.2f} {w1:7.2f} {w1 / w0:5.2f} {c0:6.2f} {c1:7.2f} {c1 / c0:5.2f}"
              f"  {cm.check.summary()}", flush=True)


if __name__ == "__main__":
    main()
