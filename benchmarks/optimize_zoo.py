"""Pruning and int8 quantization on the zoo's CIFAR-sized conv examples (ONNX Runtime).

Per example (batch 1, 2 threads, calls interleaved input by input, medians): dycomp fp32,
int8 (static QDQ, 32 calibration inputs through the host program), 50 % structured
channel pruning (uniform, or `--allocation layer_adaptive`, `--round-to auto`), pruned +
int8; each variant's speedup over fp32, parameters,
its path agreement with the fp32 model (every decision compared: fused subgraphs report
the regions they ran) and its speedup on the inputs where it takes fp32's path (pruning
a random-weight model moves exits and gates, which changes the work done). Random
weights: accuracy is the digits example's job (`examples/digits/optimize.py`).

Pruned copies are first fine-tuned towards the fp32 model's decisions (`KeepDecisions`,
6 epochs over 64 inputs other than those measured; `--no-keep` skips it).

Run: python benchmarks/optimize_zoo.py [--inputs 30] [--rounds 5] [--amount 0.5] [--no-keep]
                                       [--allocation layer_adaptive] [--round-to auto]
                                       [--tvm TRIALS [--db DIR]] [name ...]
     python benchmarks/optimize_zoo.py --paths   (every zoo example: structure, agreement)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from dycomp.passes import KeepDecisions, Prune, Quantize  # noqa: E402
from examples.zoo import ZOO  # noqa: E402

CONV = ["static_resnet", "multi_exit", "gated_resnet", "policy_net", "gated_mul"]
THREADS = 2


def variants(mod, prune: Prune, fuse: bool = True, keep: bool = True, tune=None) -> dict:
    """fp32, int8, pruned and pruned+int8 compiled for ONNX Runtime; with `tune` (a
    `dycomp.TuneConfig`), fp32 and pruned compiled for TVM, tuned (no int8 there)."""
    model, ex = mod.make(0)
    calib = mod.sample_inputs(32, seed=1)
    pruned = prune.apply(model, ex, method=mod.METHOD, samples=calib[:8])
    if keep:  # fine-tuned towards fp32's decisions on other inputs than those measured
        report = KeepDecisions(epochs=6).apply(pruned, model, mod.sample_inputs(64, seed=5),
                                               method=mod.METHOD)
        print(f"{mod.__name__.split('.')[-1]}: {report.summary()}", flush=True)
    if tune is not None:
        opts = dict(method=mod.METHOD, backend="tvm", threads=THREADS, tune=tune)
        return {"fp32": dycomp.compile(model, ex, **opts),
                "pruned": dycomp.compile(pruned, ex, **opts)}, model, pruned
    opts = dict(method=mod.METHOD, backend="onnx", threads=THREADS, fuse_branches=fuse)
    int8 = [Quantize("int8", calibration=calib)]
    return {"fp32": dycomp.compile(model, ex, **opts),
            "int8": dycomp.compile(model, ex, passes=int8, **opts),
            "pruned": dycomp.compile(pruned, ex, **opts),
            "pruned+int8": dycomp.compile(pruned, ex, passes=int8, **opts)}, model, pruned


def bench(name: str, n_inputs: int, rounds: int, prune: Prune, keep: bool, tune=None) -> dict:
    mod = ZOO[name]
    cms, model, pruned = variants(mod, prune, keep=keep, tune=tune)
    samples = mod.sample_inputs(n_inputs, seed=2)
    inputs = [tuple(t.numpy() for t in x) for x in samples]
    times = {k: [[] for _ in inputs] for k in cms}
    for x in inputs:  # warm-up
        for cm in cms.values():
            cm.program.run(*x)
    for _ in range(rounds):
        for i, x in enumerate(inputs):
            for k, cm in cms.items():
                t0 = time.perf_counter()
                cm.program.run(*x)
                times[k][i].append(time.perf_counter() - t0)
    ms = {k: _median_ms(v) for k, v in times.items()}
    paths = {k: [cm.run(*x, return_path=True)[1] for x in samples] for k, cm in cms.items()}
    agree = {k: statistics.mean(a == b for a, b in zip(paths["fp32"], p))
             for k, p in paths.items()}
    same = {}  # speedup over fp32 on the inputs where the variant takes fp32's path
    for k, p in paths.items():
        idx = [i for i, (a, b) in enumerate(zip(paths["fp32"], p)) if a == b]
        same[k] = (_median_ms([times["fp32"][i] for i in idx]) /
                   _median_ms([times[k][i] for i in idx])) if len(idx) >= 3 else float("nan")
    params = [sum(p.numel() for p in m.parameters()) for m in (model, pruned)]
    return dict(name=name, ms=ms, speedup={k: ms["fp32"] / v for k, v in ms.items()},
                agree=agree, same=same, params=params)


def _median_ms(per_input: list[list[float]]) -> float:
    return 1e3 * statistics.median(t for ts in per_input for t in ts)


def agreement(name: str, n_inputs: int, prune: Prune, keep: bool) -> str:
    """One line: does every variant keep the fp32 structure (host branches, loops and
    regions before fusion), and how often its path."""
    mod = ZOO[name]
    cms, _, _ = variants(mod, prune, fuse=False, keep=keep)
    shape = {k: {s: cm.graph.stats()[s] for s in ("regions", "branches", "loops", "returns")}
             for k, cm in cms.items()}
    samples = mod.sample_inputs(n_inputs, seed=3)
    agree = {k: dycomp.compare(cms["fp32"], cm, samples).path_agreement
             for k, cm in cms.items() if k != "fp32"}
    same = all(v == shape["fp32"] for v in shape.values())
    return (f"{name:<14} structure {'same' if same else 'DIFFERENT'} {shape['fp32']}  "
            + "  ".join(f"{k} {v:.1%}" for k, v in agree.items()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", default=CONV)
    ap.add_argument("--inputs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--allocation", choices=["uniform", "layer_adaptive"], default="uniform")
    ap.add_argument("--round-to", default="1", metavar="N|auto",
                    help="pruned groups keep a multiple of N channels ('auto': the CPU's "
                         "SIMD block, 16 with AVX-512)")
    ap.add_argument("--no-keep", action="store_true",
                    help="skip the pruned copies' fine-tune towards fp32's decisions "
                         "(KeepDecisions: 6 epochs over 64 other inputs)")
    ap.add_argument("--tvm", type=int, metavar="TRIALS", default=None,
                    help="fp32 and pruned on TVM instead, MetaSchedule-tuned with TRIALS "
                         "trials per task (database: --db)")
    ap.add_argument("--db", default=None, help="TVM tuning database directory (with --tvm)")
    ap.add_argument("--paths", action="store_true",
                    help="instead of timing: structure and path agreement of every variant "
                         "on every zoo example (or the names given)")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    prune = Prune(args.amount, allocation=args.allocation,
                  round_to=args.round_to if args.round_to == "auto" else int(args.round_to))
    print(prune, flush=True)
    if args.paths:
        for name in (args.names if args.names != CONV else sorted(ZOO)):
            print(agreement(name, args.inputs, prune, not args.no_keep), flush=True)
        return
    tune = None if args.tvm is None else dycomp.TuneConfig(trials=args.tvm, db=args.db)
    rows = [bench(n, args.inputs, args.rounds, prune, not args.no_keep, tune)
            for n in args.names]
    kinds = list(rows[0]["ms"])
    print(f"{'example':<14}" + "".join(f"{k + ' ms':>15}" for k in kinds)
          + "".join(f"{k + ' x':>15}" for k in kinds[1:]) + f"{'params':>20}"
          + "".join(f"{'agree ' + k:>18}" for k in kinds[1:])
          + "".join(f"{'same-path ' + k + ' x':>24}" for k in kinds[1:]))
    for r in rows:
        print(f"{r['name']:<14}" + "".join(f"{r['ms'][k]:>15.3f}" for k in kinds)
              + "".join(f"{r['speedup'][k]:>15.2f}" for k in kinds[1:])
              + f"{r['params'][0]:>10,}->{r['params'][1]:<9,}"
              + "".join(f"{r['agree'][k]:>18.1%}" for k in kinds[1:])
              + "".join(f"{r['same'][k]:>24.2f}" for k in kinds[1:]))
    for k in kinds[1:]:
        g = math.exp(statistics.mean(math.log(r["speedup"][k]) for r in rows))
        print(f"geomean speedup over fp32, {k}: {g:.2f}x")


if __name__ == "__main__":
    main()
