"""The dynamic-aware optimizations, each on and off (ONNX Runtime, batch 1, 2 threads).

Per case: eager PyTorch, dycomp without the pass, dycomp with it (median ms over inputs x
rounds; each round runs every contender over all inputs as a block, in an order rotated
per round, as `dycomp bench` does: interleaving sessions call by call slows each one),
the speedup the pass gives, and a check that the outputs with the pass equal those
without it and eager's on every input.

- gated_mul (GateToBranch): the zoo's multiplication-gated ResNet (18 gated blocks on
  1x3x32x32); its gate-off rate over the inputs is printed. Without the pass the model
  is one static ONNX graph that computes every block.
- attend (HoistLoopInvariants): the decoder's attention entry point at benchmark size
  (`decoder.make_attention`: 64 source steps, hidden 256, 16 decode steps).
- nested_if, gated54 (FuseAcrossDecisions): cheap arms speculated and selected.

Run: python benchmarks/dynamic_opts.py [--inputs 30] [--rounds 5] [case ...]
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
from dycomp.passes import DYNAMIC_PASSES  # noqa: E402
from examples.zoo import ZOO, decoder  # noqa: E402

THREADS = 2


def _zoo(name, method="forward"):
    def build(n):
        model, ex = ZOO[name].make(0)
        return getattr(model, method), ex, ZOO[name].sample_inputs(n, seed=2)
    return build


def _attention(n):
    model, ex = decoder.make_attention(0)
    src = [(torch.randn(ex[0].shape, generator=torch.Generator().manual_seed(i)),)
           for i in range(n)]
    return model.attend, ex, src


CASES = {"gated_mul": (_zoo("gated_mul"), "gate-to-branch"),
         "attend": (_attention, "hoist-loop-invariants"),
         "nested_if": (_zoo("nested_if"), "fuse-across-decisions"),
         "gated54": (_zoo("gated54"), "fuse-across-decisions")}


def bench(case: str, n_inputs: int, rounds: int) -> dict:
    build, pass_name = CASES[case]
    fn, example, samples = build(n_inputs)
    others = [p for p in DYNAMIC_PASSES if p != pass_name]
    t0 = time.perf_counter()
    on = dycomp.compile(fn, example, backend="onnx", threads=THREADS)
    compile_s = time.perf_counter() - t0
    off = dycomp.compile(fn, example, backend="onnx", threads=THREADS, optimize=others)
    applied = sum(o.startswith(pass_name) for o in on.optimizations)
    exact = True
    for x in samples:
        with torch.no_grad():
            expected = fn(*x)
        exact &= compare(expected, on(*x)) is None and compare(off(*x), on(*x)) is None
    contenders = {"eager": lambda *a: fn(*a), "off": off.program.run, "on": on.program.run}
    arrays = [tuple(t.numpy() for t in x) for x in samples]
    times = {k: [] for k in contenders}
    with torch.no_grad():
        for x, a in zip(samples, arrays):  # warm-up
            fn(*x), off.program.run(*a), on.program.run(*a)
        names = list(contenders)
        for r in range(rounds):  # contender blocks, order rotated per round
            for k in names[r % 3:] + names[:r % 3]:
                for x, a in zip(samples, arrays):
                    args = x if k == "eager" else a
                    t = time.perf_counter()
                    contenders[k](*args)
                    times[k].append(time.perf_counter() - t)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    row = dict(case=case, pass_name=pass_name, applied=applied, exact=exact, ms=ms,
               speedup=ms["off"] / ms["on"], compile_s=compile_s,
               regions=(off.graph.stats()["regions"], on.graph.stats()["regions"]))
    if case == "gated_mul":
        row["off_rate"] = _gate_off_rate(fn, samples)
    return row


def _gate_off_rate(fn, samples) -> float:
    """Fraction of (input, block) pairs whose gate is off, from the zoo's path labels."""
    model, mod = fn.__self__, ZOO["gated_mul"]
    with torch.no_grad():
        bits = [b for x in samples for b in mod.path_key(model, x, fn(*x))]
    return 1 - statistics.mean(bits)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", metavar="case",
                    help=f"cases to run (default: all of {', '.join(CASES)})")
    ap.add_argument("--inputs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    unknown = set(args.cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case {sorted(unknown)[0]!r}; choose from {', '.join(CASES)}")
    torch.set_num_threads(THREADS)
    print(f"{'case':<11}{'pass':<24}{'fired':>6}{'eager ms':>10}{'off ms':>9}{'on ms':>9}"
          f"{'speedup':>9}{'regions off->on':>17}{'compile s':>11}  outputs")
    for case in args.cases or CASES:
        r = bench(case, args.inputs, args.rounds)
        extra = f"  gate-off rate {r['off_rate']:.0%}" if "off_rate" in r else ""
        print(f"{case:<11}{r['pass_name']:<24}{r['applied']:>6}{r['ms']['eager']:>10.3f}"
              f"{r['ms']['off']:>9.3f}{r['ms']['on']:>9.3f}{r['speedup']:>8.2f}x"
              f"{r['regions'][0]:>8} -> {r['regions'][1]:<6}{r['compile_s']:>11.1f}  "
              f"{'unchanged' if r['exact'] else 'DIFFER'}{extra}", flush=True)


if __name__ == "__main__":
    main()
