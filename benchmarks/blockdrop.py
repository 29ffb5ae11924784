"""BlockDrop-style ResNet-110 (54 gated blocks): wrong outputs and latency per backend.

The model (`examples/blockdrop.py`) thresholds its policy network's probabilities by
masked assignment and hands `policy.data.squeeze(0)` to `forward_single`, which runs
block t `if policy[t] == 1`. The ONNX exporter used to freeze that `.data` into a
constant holding the example's policy (wrong logits on most inputs); this script counts
wrong outputs (fp32, atol/rtol 1e-4, and the returned policy) over N inputs per backend,
each compiled with the default self-check, and prints median latency against eager.
Untuned TVM is slow to build and run: it gets its own, smaller input count.

Run: python benchmarks/blockdrop.py [--inputs 500] [--tvm-inputs 50] [--threads 1]
     [--backends onnx torch tvm]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from dycomp.check import compare  # noqa: E402
from examples import blockdrop  # noqa: E402


def _ms(fn, x) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(x)
    return out, (time.perf_counter() - start) * 1e3


def run_backend(model, example, inputs, expected, backend: str, threads: int) -> dict:
    """Compile (default check), then wrong outputs and latency over `inputs`."""
    start = time.perf_counter()
    options = {} if backend == "torch" else {"threads": threads}
    cm = dycomp.compile(model, example, backend=backend, **options)
    compile_s = time.perf_counter() - start
    wrong, times = 0, []
    for (x,), want in zip(inputs, expected):
        got, ms = _ms(cm, x)
        times.append(ms)
        wrong += compare(want, got) is not None
    return {"backend": backend, "compile_s": compile_s, "n": len(inputs), "wrong": wrong,
            "median_ms": statistics.median(times)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=500)
    ap.add_argument("--tvm-inputs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch and region threads")
    ap.add_argument("--backends", nargs="+", default=["onnx", "torch", "tvm"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, example = blockdrop.make()  # ResNet-110: 3 stages x 18 blocks, 1x3x32x32
    inputs = blockdrop.sample_inputs(args.inputs, seed=7)
    expected, eager_ms = [], []
    with torch.no_grad():
        for (x,) in inputs:
            out, ms = _ms(model, x)
            expected.append(out)
            eager_ms.append(ms)
    policies = {blockdrop.policy_key(e) for e in expected}
    blocks = [sum(k) for k in policies]
    eager = statistics.median(eager_ms)
    print(f"BlockDrop ResNet-110 (54 gated blocks), {args.inputs} inputs: {len(policies)} "
          f"distinct policies, {min(blocks)}-{max(blocks)} blocks run; eager median "
          f"{eager:.2f} ms ({args.threads} thread(s))")
    print(f"{'backend':8} {'compile s':>9} {'inputs':>6} {'wrong':>5} {'median ms':>9} "
          f"{'vs eager':>8}")
    for backend in args.backends:
        n = args.tvm_inputs if backend == "tvm" else args.inputs
        r = run_backend(model, example, inputs[:n], expected[:n], backend, args.threads)
        print(f"{r['backend']:8} {r['compile_s']:9.1f} {r['n']:6d} {r['wrong']:5d} "
              f"{r['median_ms']:9.2f} {r['median_ms'] / eager:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
