"""Per-call cost of OnnxExecutor against a bare `InferenceSession.run` on the same region.

    python benchmarks/onnx_call_overhead.py [zoo example, default policy_net]

Prints, for the smallest and the largest region of the example, the best-of-5 time per
call of: `sess.run(None, feed)` with a prebuilt feed dict, the C++ `sess._sess.run` the
executor binds given no run options and given the executor's (`RUN_OPTIONS`), and
`OnnxExecutor.__call__(region, *args)` (feed built per call).
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from dycomp.runtime.onnx_executor import RUN_OPTIONS  # noqa: E402
from examples.zoo import ZOO  # noqa: E402


def per_call_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main(name: str = "policy_net") -> None:
    model, example = ZOO[name].make()
    cm = dycomp.compile(model, example, backend="onnx", check=False, fuse_branches=False)
    ex = cm.program.executor
    by_size = sorted(cm.graph.regions.values(), key=lambda r: len(ex.models[r.name]))
    print(f"{name}: {len(by_size)} regions, onnxruntime threads={ex.threads}")
    print(f"{'region':>8} {'ops':>4} {'sess.run':>10} {'_sess.run':>10} {'+options':>10} "
          f"{'executor':>10} {'delta':>8}")
    for r, n in ((by_size[0], 20000), (by_size[-1], 2000)):
        bare, cpp, opts, call = compare(ex, r, n)
        print(f"{r.name:>8} {r.op_count():>4} {bare:8.2f}us {cpp:8.2f}us {opts:8.2f}us "
              f"{call:8.2f}us {call - bare:+6.2f}us")


def compare(ex, region, n: int) -> tuple[float, float, float, float]:
    args = [p.meta["example"].numpy() for p in region.placeholders]
    sess = ex.sessions[region.name]
    feed = {i.name: a for i, a in zip(sess.get_inputs(), args)}
    outs = [o.name for o in sess.get_outputs()]
    return (per_call_us(lambda: sess.run(None, feed), n),
            per_call_us(lambda: sess._sess.run(outs, feed, None), n),
            per_call_us(lambda: sess._sess.run(outs, feed, RUN_OPTIONS), n),
            per_call_us(lambda: ex(region.name, *args), n))


if __name__ == "__main__":
    main(*sys.argv[1:])
