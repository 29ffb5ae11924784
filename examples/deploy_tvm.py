"""Compile a dynamic network with the TVM backend, tune it, deploy it without PyTorch.

Run: python examples/deploy_tvm.py [--trials N] [--db DIR] [--out DIR]

--trials 0 (the default) builds untuned code in seconds, which runs far slower than
ONNX Runtime; --trials 16 tunes every kernel (about a minute per tuning task on 2
cores) into the tuning database, and the next run with the same model reuses it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from examples.zoo import multi_exit  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per task")
    p.add_argument("--db", help="tuning database directory (default: the user cache)")
    p.add_argument("--out", default="multi_exit_tvm.dyc", help="artifact directory")
    a = p.parse_args(argv)

    model, example = multi_exit.make()
    tune = dycomp.TuneConfig(trials=a.trials, db=a.db) if a.trials else None
    t0 = time.perf_counter()
    cm = dycomp.compile(model, example, backend="tvm", tune=tune)  # checked against eager
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {cm.executor.report.summary()}")
    path = cm.save(a.out)

    # what a deployment does: numpy + TVM runtime only; regions.so is native code, so
    # loading it needs consent (or a signature: dycomp sign / public_key=...)
    art = dycomp.runtime.load(path, trust_native=True)
    for x, in multi_exit.sample_inputs(3, seed=1):
        (logits, exit_id, _), taken = art.run(x.numpy(), return_path=True)
        with torch.no_grad():
            expected = model(x)[0].numpy()
        print(f"exit {int(exit_id)}  path {' -> '.join(taken)}  "
              f"max |diff| vs eager {np.abs(logits - expected).max():.1e}")
    print(f"artifact: {path} (run it with `dycomp run {path} --input x.npy`)")


if __name__ == "__main__":
    main()
