"""ConvNet-AIG with its eval-time Gumbel noise on: gate frequencies, eager vs compiled.

A compiled model's random stream is not PyTorch's, so calls cannot be compared one by
one; instead each block's opening frequency over R calls on each of K inputs is compared
(flagged when eager and compiled differ by more than 3 standard errors).

    python benchmarks/corpus/aig_noise.py --src DIR [--backend torch] [--inputs K] [--calls R]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import dycomp  # noqa: E402
from benchmarks.corpus import convnet_aig  # noqa: E402

log = logging.getLogger("dycomp.corpus")


def frequencies(fn, inputs, calls: int) -> torch.Tensor:
    """Per input and block: the fraction of calls whose gate was open."""
    out = []
    with torch.no_grad():
        for args, kwargs in inputs:
            opened = sum((torch.stack([g.flatten() for g in fn(*args, **kwargs)[1]]) > 0.5)
                         .float() for _ in range(calls))
            out.append(opened.flatten() / calls)
    return torch.stack(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--backend", default="torch")
    p.add_argument("--inputs", type=int, default=3)
    p.add_argument("--calls", type=int, default=100)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    case = convnet_aig.build(a.src, noise=True)
    inputs = [case.make_input(i) for i in range(a.inputs)]
    try:
        cm = dycomp.compile(case.fn, inputs[0][0], example_kwargs=inputs[0][1],
                            backend=a.backend, threads=2, check=False)
    except Exception as e:  # noqa: BLE001 - reported
        print(f"noise on, backend {a.backend}: does not compile: "
              f"{type(e).__name__}: {str(e).splitlines()[0]}")
        return 1
    fe, fc = frequencies(case.fn, inputs, a.calls), frequencies(cm, inputs, a.calls)
    p_ = (fe + fc) / 2
    se = (2 * p_ * (1 - p_) / a.calls).sqrt().clamp_min(1e-12)
    z = (fe - fc).abs() / se
    flagged = int((z > 3).sum())
    n = fe.numel()
    print(f"noise on, backend {a.backend}: {a.inputs} inputs x {a.calls} calls, {n} gate "
          f"frequencies; mean open eager {fe.mean():.3f} compiled {fc.mean():.3f}; "
          f"max |z| {z.max():.2f}; {flagged}/{n} beyond 3 standard errors "
          f"(~{n * math.erfc(3 / math.sqrt(2)):.2f} expected by chance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
