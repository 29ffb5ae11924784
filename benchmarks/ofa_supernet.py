"""Once-for-All as one artifact with 8 sub-networks (issue #26).

    pip install --no-deps --target SRC/_site/ofa ofa      # the `ofa` package (PyPI)
    python benchmarks/ofa_supernet.py --src SRC [--inputs 50] [--rounds 7] [--no-check]

Builds `ofa_mbv3_d234_e346_k357_w1.0` with random weights (`pretrained=False`: nothing
is downloaded; its module-level `import gdown` gets an empty module; every BatchNorm's
scale, shift and statistics randomized, since the package's init zeroes the last scale
of each residual block, which makes the sub-networks compute nearly the same), declares 8
sub-networks as `set_active_subnet(ks=..., e=..., d=...)` calls and compiles them with
`dycomp.compile(..., selectors={"subnet": [...]}, backend="onnx")`. Prints, per
sub-network: outputs against eager configured the same way on `--inputs` random inputs
(max abs difference), median latency of eager and of the compiled sub-network through
the selector model (alternating, `--rounds` each, 2 threads each) and the speedup; then the
geomean speedup, the one artifact's size against the largest sub-network's own
artifact and the sum of the 8 artifacts it replaces, and the weight store's counts.
The torchvision shim of `benchmarks/corpus/common.py` is applied (`SRC/_site/
torchvision028`, or `$DYCOMP_CORPUS_SIDE`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "corpus")]

from common import shim_torchvision, site_dir  # noqa: E402

import dycomp  # noqa: E402

CONFIGS = [dict(ks=3, e=3, d=2), dict(ks=3, e=4, d=2), dict(ks=5, e=3, d=3),
           dict(ks=5, e=6, d=3), dict(ks=7, e=4, d=3), dict(ks=3, e=6, d=4),
           dict(ks=7, e=3, d=4), dict(ks=7, e=6, d=4)]


def build(src: Path):
    """The OFA MobileNetV3 supernet, random weights, eval mode."""
    side = shim_torchvision(src)
    sys.modules.setdefault("gdown", types.ModuleType("gdown"))  # imported, never used here
    sys.path[:0] = [str(side), str(site_dir(src, "ofa"))]
    from ofa.model_zoo import ofa_net

    torch.manual_seed(0)
    net = ofa_net("ofa_mbv3_d234_e346_k357_w1.0", pretrained=False).eval()
    with torch.no_grad():  # its init zeroes residual blocks' last BN scale: all depths alike
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def interleaved_ms(f, g, x, rounds: int) -> tuple[float, float]:
    """Median milliseconds of `f(x)` and `g(x)`, timed alternately (same machine load)."""
    times: tuple[list, list] = ([], [])
    for _ in range(rounds):
        for fn, out in ((f, times[0]), (g, times[1])):
            t0 = time.perf_counter()
            fn(x)
            out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def block_ms(f, g, x, rounds: int, calls: int) -> tuple[float, float]:
    """Median milliseconds per call of `f(x)` and `g(x)`, each timed over `calls` calls in a
    row, the order alternating between rounds: neither runs while the other's spinning
    thread pool (PyTorch's OpenMP, ONNX Runtime's) still holds a core, as in a deployment
    that runs one of them."""
    times: tuple[list, list] = ([], [])
    for r in range(rounds):
        pairs = ((f, times[0]), (g, times[1]))
        for fn, out in pairs if r % 2 == 0 else pairs[::-1]:
            fn(x)  # warm after the other contender
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(x)
            out.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--blocks", type=int, default=0, metavar="CALLS",
                    help="time each contender over CALLS calls in a row per round (default:"
                         " call by call, alternating)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    net = build(args.src)
    x = torch.randn(1, 3, 224, 224)
    calls = [("set_active_subnet", c) for c in CONFIGS]
    t0 = time.perf_counter()
    cm = dycomp.compile(net, (x,), backend="onnx", selectors={"subnet": calls},
                        check=args.check)
    print(f"compiled {len(CONFIGS)} sub-networks in {time.perf_counter() - t0:.0f} s")
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, 224, 224, generator=g) for _ in range(args.inputs)]
    speedups, firsts = [], []
    print(f"{'sub-network':<34} {'max|eager|':>10} {'max|diff|':>10} {'eager ms':>9} "
          f"{'dycomp ms':>10} {'x':>6}")
    for c in CONFIGS:
        net.set_active_subnet(**c)
        cm.set_active_subnet(**c)
        with torch.no_grad():
            refs = [net(xi) for xi in inputs]
            diff = max((cm(xi) - r).abs().max().item() for xi, r in zip(inputs, refs))
            scale = max(r.abs().max().item() for r in refs)
            eager, ours = (block_ms(net, cm, x, args.rounds, args.blocks) if args.blocks
                           else interleaved_ms(net, cm, x, args.rounds))
        speedups.append(eager / ours)
        firsts.append(refs[0])
        print(f"{str(c):<34} {scale:>10.3g} {diff:>10.2e} {eager:>9.2f} {ours:>10.2f} "
              f"{eager / ours:>6.2f}")
    apart = min((a - b).abs().max().item() for i, a in enumerate(firsts) for b in firsts[:i])
    print(f"the two closest sub-networks differ by {apart:.2e} on the first input (max abs)")
    print(f"geomean speedup over eager: "
          f"{math.exp(statistics.mean(map(math.log, speedups))):.2f}x")
    tmp = Path(tempfile.mkdtemp())
    one = size(cm.save(tmp / "ofa.dyc"))
    own = [size(sub.save(tmp / f"sub{i}.dyc")) for i, sub in enumerate(cm.subnets.values())]
    print(f"one artifact: {one / 1e6:.2f} MB = {one / max(own):.3f}x the largest sub-network's"
          f" own ({max(own) / 1e6:.2f} MB); the {len(own)} artifacts it replaces: "
          f"{sum(own) / 1e6:.2f} MB")
    rt = dycomp.runtime.load(tmp / "ofa.dyc")
    print("weight store: " + _store_line(tmp / "ofa.dyc"))
    rt.set_active_subnet(**CONFIGS[-1])
    net.set_active_subnet(**CONFIGS[-1])
    with torch.no_grad():
        diff = abs(rt(inputs[0].numpy()) - net(inputs[0]).numpy()).max()
    print(f"loaded with dycomp.runtime, {CONFIGS[-1]}: max|diff| {diff:.2e}")


def _store_line(path: Path) -> str:
    import json

    w = json.loads((path / "manifest.json").read_text())["weights"]
    return (f"{w['tensors']} distinct tensors ({w['bytes'] / 1e6:.2f} MB) for "
            f"{w['references']} references, {w['blocks']} of them blocks of a larger one")


if __name__ == "__main__":
    main()
