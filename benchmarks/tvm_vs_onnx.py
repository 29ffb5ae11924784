"""dycomp + TVM (untuned and tuned) vs dycomp + ONNX Runtime vs eager PyTorch on the zoo.

Per example (batch 1, 2 threads for every contender, calls interleaved input by input):
eager, dycomp-onnx, dycomp-tvm untuned and tuned median ms; tuned TVM / ONNX Runtime;
regions TVM runs and regions that fell back to ONNX Runtime; tuning tasks, trials and
wall time; and the time of a second tuned compile of the same model, which reuses the
tuning database (the time saved is the tuning time).

Tuning is slow on 2 cores (~1 min per task at 16 trials): the database (`--db`,
default the user cache) keeps the results, so a rerun only measures.

Run: python benchmarks/tvm_vs_onnx.py [--trials 16] [--db DIR] [--inputs 20] [--rounds 3]
     [--json results.json] [name ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from examples.zoo import ZOO  # noqa: E402

THREADS = 2


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _compile(model, example, **options):
    t0 = time.perf_counter()
    cm = dycomp.compile(model, example, check=True, threads=THREADS, **options)
    return cm, time.perf_counter() - t0


def bench(name, mod, trials: int, db: str | None, n_inputs: int, rounds: int) -> dict:
    model, example = mod.make()
    tune = dycomp.TuneConfig(trials=trials, db=db)
    onnx, _ = _compile(model, example, backend="onnx")
    untuned, untuned_s = _compile(model, example, backend="tvm")
    tuned, tuned_s = _compile(model, example, backend="tvm", tune=tune)
    report = tuned.executor.report
    again, again_s = _compile(model, example, backend="tvm", tune=tune)  # database reuse
    inputs = mod.sample_inputs(n_inputs)
    arrays = [tuple(t.numpy() for t in inp) for inp in inputs]
    contenders = {"eager": lambda inp, arr: model(*inp),
                  "onnx": lambda inp, arr: onnx.program.run(*arr),
                  "tvm": lambda inp, arr: untuned.program.run(*arr),
                  "tvm_tuned": lambda inp, arr: tuned.program.run(*arr)}
    times = {k: [] for k in contenders}
    with torch.no_grad():
        for inp, arr in zip(inputs, arrays):  # warm-up
            for fn in contenders.values():
                fn(inp, arr)
        for _ in range(rounds):
            for inp, arr in zip(inputs, arrays):
                for k, fn in contenders.items():
                    times[k].append(_timed(fn, inp, arr))
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return dict(name=name, **ms, tuned_vs_onnx=ms["tvm_tuned"] / ms["onnx"],
                tuned_vs_eager=ms["eager"] / ms["tvm_tuned"], regions=len(report.tvm),
                fallback=len(report.fallback), tasks=report.tasks,
                tuned_now=report.tuned_now, reused=report.reused, trials=trials,
                tune_s=report.tune_seconds, compile_s=tuned_s, untuned_compile_s=untuned_s,
                again_s=again_s, again_reused=again.executor.report.reused)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(ZOO))
    p.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per task")
    p.add_argument("--db", default=None, help="tuning database (default: the user cache)")
    p.add_argument("--inputs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    a = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    rows = []
    for n in a.names:
        rows.append(bench(n, ZOO[n], a.trials, a.db, a.inputs, a.rounds))
        r = rows[-1]
        print(f"{n}: tuned {r['tasks']} tasks ({r['tuned_now']} now, {r['reused']} reused) "
              f"in {r['tune_s']:.0f} s; recompile {r['again_s']:.1f} s", flush=True)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{'example':<15}{'eager':>8}{'onnx':>8}{'tvm':>9}{'tuned':>8}{'tuned/onnx':>11}"
          f"{'vs eager':>9}{'on tvm':>7}{'onnx fb':>8}{'tasks':>6}{'tune s':>8}{'again s':>8}")
    for r in rows:
        print(f"{r['name']:<15}{r['eager']:>8.3f}{r['onnx']:>8.3f}{r['tvm']:>9.3f}"
              f"{r['tvm_tuned']:>8.3f}{r['tuned_vs_onnx']:>11.2f}{r['tuned_vs_eager']:>9.2f}"
              f"{r['regions']:>7}{r['fallback']:>8}{r['tasks']:>6}{r['tune_s']:>8.0f}"
              f"{r['again_s']:>8.1f}")

    def geo(key):
        return math.exp(statistics.mean(math.log(r[key]) for r in rows))

    print(f"\ngeomean tuned TVM / ONNX Runtime: {geo('tuned_vs_onnx'):.2f}x; tuned TVM "
          f"speedup vs eager: {geo('tuned_vs_eager'):.2f}x (slowest "
          f"{min(r['tuned_vs_eager'] for r in rows):.2f}x); trials per task: {a.trials}")


if __name__ == "__main__":
    main()
