"""One artifact, many sub-networks (issue #26): sizes and the cost of selecting.

    python benchmarks/subnet_selectors.py [--rounds 101] [--calls 50]

A slimmable CNN (3 convs of up to 64/128/256 channels on 32x32 inputs, weights sliced in
forward, an early exit) compiled with `selectors={"width": [0.25, 0.5, 0.75, 1.0]}` for
ONNX Runtime. Prints:

- sizes: the one artifact (every sub-network, weights.bin shared) against the largest
  sub-network's own artifact and the sum of the per-sub-network artifacts it replaces;
- per width, the median time per call, interleaved (each round runs each contender
  `--calls` times, in a new random order), of `cm(x, width=w)` against that
  sub-network's own compiled model `own(x)` (the model compiled on its own with the width
  fixed, called positionally: the fastest call dycomp has), and of the loaded runtime
  `rt(x, width=w)` against the sub-network's own runtime artifact; the difference is
  the cost of selecting (noisy on a shared machine: the sub-networks take 0.05-1.5 ms);
- the selection alone: the same two calls with every sub-network replaced by a no-op,
  minus the no-op called directly (min of 5 x 200,000 calls);
- the latency table (`cm.measure()`) and `cm.select(budget_ms=...)` at a few budgets.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402

WIDTHS = [0.25, 0.5, 0.75, 1.0]


class SlimNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 64, 3, padding=1),
                                    nn.Conv2d(64, 128, 3, padding=1, stride=2),
                                    nn.Conv2d(128, 256, 3, padding=1, stride=2)])
        self.fc = nn.Linear(256, 100)

    def forward(self, x, width=1.0):
        c_in = 3
        for conv in self.convs:
            c = int(conv.out_channels * width)
            x = F.relu(F.conv2d(x, conv.weight[:c, :c_in], conv.bias[:c], padding=1,
                                stride=conv.stride))
            c_in = c
        h = x.mean((2, 3))
        if h.abs().mean() > 10.0:  # an early exit, rarely taken
            return h[:, :10]
        return F.linear(h, self.fc.weight[:, :c_in], self.fc.bias)


class Fixed(nn.Module):
    """One width of `net`, as its own model."""

    def __init__(self, net, width):
        super().__init__()
        self.net, self.width = net, width

    def forward(self, x):
        return self.net(x, width=self.width)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def timed(contenders: dict, rounds: int, calls: int) -> dict[str, float]:
    """Median microseconds per call of each contender, interleaved."""
    times = {k: [] for k in contenders}
    for _ in range(rounds):
        order = list(contenders)
        random.shuffle(order)
        for k in order:
            f = contenders[k]
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            times[k].append((time.perf_counter() - t0) / calls * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def dispatch(cm, rt, x) -> None:
    """The selection alone, without the model's noise: the same calls with every
    sub-network replaced by a no-op, against calling the no-op itself."""
    def noop(*a, **k):
        return None

    cm_saved, rt_saved = cm._entries, rt.subnets
    cm._entries = dict.fromkeys(cm._entries, noop)
    rt.subnets = dict.fromkeys(rt.subnets, noop)
    xn = x.numpy()
    try:
        n = 200_000
        base = min(timeit.repeat(lambda: noop((x,), {}), number=n, repeat=5)) / n * 1e6
        sel = min(timeit.repeat(lambda: cm(x, width=0.5), number=n, repeat=5)) / n * 1e6
        base_rt = min(timeit.repeat(lambda: noop(xn), number=n, repeat=5)) / n * 1e6
        sel_rt = min(timeit.repeat(lambda: rt(xn, width=0.5), number=n, repeat=5)) / n * 1e6
    finally:
        cm._entries, rt.subnets = cm_saved, rt_saved
    print(f"selection alone: cm(x, width=0.5) {sel - base:.3f} us, rt(x, width=0.5) "
          f"{sel_rt - base_rt:.3f} us per call over calling the sub-network")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=101)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    net = SlimNet().eval()
    x = torch.randn(1, 3, 32, 32)
    cm = dycomp.compile(net, (x,), backend="onnx", selectors={"width": WIDTHS})
    own = {w: dycomp.compile(Fixed(net, w), (x,), backend="onnx") for w in WIDTHS}
    tmp = Path(tempfile.mkdtemp())
    one = size(cm.save(tmp / "all.dyc"))
    sizes = {w: size(own[w].save(tmp / f"w{w}.dyc")) for w in WIDTHS}
    big = max(sizes.values())
    print(f"one artifact: {one} B = {one / big:.3f}x the largest sub-network's own "
          f"({big} B); the {len(WIDTHS)} per-sub-network artifacts: {sum(sizes.values())} B"
          f" ({one / sum(sizes.values()):.3f}x)")
    rt = dycomp.runtime.load(tmp / "all.dyc")
    rt_own = {w: dycomp.runtime.load(tmp / f"w{w}.dyc") for w in WIDTHS}
    xn = x.numpy()
    print(f"{'width':>6} {'cm(x,width)':>12} {'own(x)':>9} {'select':>8} "
          f"{'rt(x,width)':>12} {'own rt(x)':>10} {'select':>8}   (us per call)")
    for w in WIDTHS:
        t = timed({"cm": lambda w=w: cm(x, width=w), "own": lambda w=w: own[w](x),
                   "rt": lambda w=w: rt(xn, width=w), "rt_own": lambda w=w: rt_own[w](xn)},
                  args.rounds, args.calls)
        print(f"{w:>6} {t['cm']:>12.2f} {t['own']:>9.2f} {t['cm'] - t['own']:>+8.2f} "
              f"{t['rt']:>12.2f} {t['rt_own']:>10.2f} {t['rt'] - t['rt_own']:>+8.2f}")
    dispatch(cm, rt, x)
    cm.measure(repeat=50)
    print(cm.table())
    for budget in sorted(cm.latency.values()):
        print(f"select(budget_ms={budget:.3f}) -> {cm.select(budget_ms=budget)}")


if __name__ == "__main__":
    main()
