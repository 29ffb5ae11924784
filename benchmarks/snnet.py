"""Stitchable Neural Networks (ziplab/SN-Net) as one artifact with all stitch ids (issue #26).

    python benchmarks/snnet.py --src /work/corpus/SN-Net [--anchors tiny small base]
        [--stitches 0 5 9] [--inputs 50] [--rounds 7] [--threads 2] [--no-check]
        [--max-live 8]

Builds the repository's stitched DeiT (`stitching_deit/snnet.py` `SNNet`, anchors from its
`models.py` `deit_{tiny,small,base}_patch16_224`, `pretrained=False`, random weights,
seed 0; kernel size 2, stride 1, as `config/deit_stitching.json`). The stitching layers
are initialized as the repository does, by least squares (`initialize_stitching_weights`),
here on a seeded batch of `--ls-batch` random images instead of ImageNet. Three anchors
use the repository's default `nearest_stitching=True` (Ti-S and S-B stitches: 71 stitch
ids); two anchors need `nearest_stitching=False` (its nearest rule removes the Ti-B pair,
which two anchors do not have; Ti+S: 36 stitch ids).

Declares every stitch id (or `--stitches`) as a `reset_stitch_id(k)` setter call and
compiles them with `dycomp.compile(..., selectors={"stitch": [...]}, backend="onnx")`.
Prints per stitch id: outputs against eager configured the same way on `--inputs` random
inputs (max abs difference), median latency of eager and of the compiled sub-network
through the selector model (alternating, `--rounds` each, `--threads` each, default 2) and the
speedup (eager's references are one batch of all inputs, computed with 1 thread, as is
the compilation: on a shared machine a 2-thread team waits for its descheduled thread);
then the geomean, the one artifact's size against the largest sub-network's
own artifact and the sum of the per-sub-network artifacts it replaces (each saved,
measured and removed in turn), the lower bound the disjoint anchors imply (all
parameters over the largest sub-network's), and one stitch run through
`dycomp.runtime.load`.

Memory (issue #26): the sub-networks share one weight store and create their sessions on
first call, at most `--max-live` alive (`max_live_subnets`). Printed: peak RSS after
compiling and after checking every id (the process's `ru_maxrss`, the eager model
included), and a fresh process (`snnet_loaded.py`: dycomp.runtime and numpy) that loads
the saved artifact and runs every id on the same inputs against the eager outputs saved
beside it: its max abs difference, load time and peak RSS. `--rounds 0` skips timing.

Harness shims (the repository's code is loaded from `--src` at run time, never copied):
`params` (its module parses `sys.argv` at import) and `logger` (it writes
`outputs/<exp>/` into the working directory at import) are replaced by stand-ins
(`args=None`, a `logging` logger); timm 1.0.31 comes from `SRC/../_site/timm1031` and
torchvision's Python parts from `SRC/../_site/torchvision028` with the torchvision shim
of `benchmarks/corpus/common.py` (`$DYCOMP_CORPUS_SIDE` overrides the latter).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "corpus")]

from common import shim_torchvision, site_dir  # noqa: E402
from ofa_supernet import block_ms, interleaved_ms  # noqa: E402  (the same timing as OFA)
from snnet_loaded import memory  # noqa: E402  (torch-free: the loaded run uses it too)

import dycomp  # noqa: E402

ANCHORS = {"tiny": "deit_tiny_patch16_224", "small": "deit_small_patch16_224",
           "base": "deit_base_patch16_224"}


def build(src: Path, anchors: list[str], ls_batch: int):
    """The repository's SNNet over `anchors`, random weights, stitching layers least-squares
    initialized on random images, eval mode."""
    side = shim_torchvision(src.parent)
    sys.modules["params"] = types.SimpleNamespace(args=None)  # parses sys.argv at import
    sys.modules["logger"] = types.SimpleNamespace(logger=logging.getLogger("snnet"))
    sys.path[:0] = [str(src / "stitching_deit"), str(site_dir(src.parent, "timm1031")),
                    str(side)]
    for name in ("models", "snnet", "utils"):  # the repository's, not same-named others
        sys.modules.pop(name, None)
    import models
    import snnet

    torch.manual_seed(0)
    nets = [getattr(models, ANCHORS[a])(pretrained=False).eval() for a in anchors]
    net = snnet.SNNet(nets, nearest_stitching=len(nets) == 3).eval()
    net.initialize_stitching_weights(torch.randn(ls_batch, 3, 224, 224))
    return net


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True, help="the SN-Net checkout")
    ap.add_argument("--anchors", nargs="+", default=["tiny", "small", "base"],
                    choices=list(ANCHORS))
    ap.add_argument("--stitches", nargs="+", type=int, help="stitch ids (default: all)")
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ls-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="threads of each timed contender")
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--max-live", type=int, default=dycomp.runtime.artifact.DEFAULT_LIVE,
                    help="sub-networks with live sessions at most (max_live_subnets)")
    ap.add_argument("--blocks", type=int, default=0, metavar="CALLS",
                    help="time each contender over CALLS calls in a row per round (default:"
                         " call by call, alternating)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # 2 only while timing: a shared machine stalls 2-thread teams
    net = build(args.src, args.anchors, args.ls_batch)
    ids = args.stitches if args.stitches else list(range(net.num_configs))
    print(f"anchors {args.anchors}: {net.num_configs} stitch ids, compiling {len(ids)}")
    x = torch.randn(1, 3, 224, 224)
    calls = [("reset_stitch_id", (k,), {}) for k in ids]
    t0 = time.perf_counter()
    cm = dycomp.compile(net, (x,), backend="onnx", selectors={"stitch": calls},
                        check=args.check, threads=args.threads, max_live_subnets=args.max_live)
    print(f"compiled {len(ids)} sub-networks in {time.perf_counter() - t0:.0f} s "
          f"({memory()}; weight store {cm.weights.nbytes / 1e6:.1f} MB)", flush=True)
    refs = report(net, cm, ids, args)
    print(f"after running every id: {memory()}; {len(cm.live())} sub-networks live")
    sizes(net, cm, ids, refs, args)


def report(net, cm, ids: list[int], args) -> None:
    """Per stitch id: max abs diff vs eager on the inputs, eager and dycomp latency."""
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, 224, 224, generator=g) for _ in range(args.inputs)]
    speedups, firsts, saved = [], [], {"inputs": torch.cat(inputs).numpy()}
    print(f"{'id':>3} {'anchors':<8} {'stitch':<12} {'params M':>8} {'max|eager|':>10} "
          f"{'max|diff|':>10} {'1st call s':>10} {'eager ms':>9} {'dycomp ms':>10} {'x':>6}")
    for k in ids:
        net.reset_stitch_id(k)
        cm.reset_stitch_id(k)
        cfg = net.stitch_configs[k]
        with torch.no_grad():
            refs = list(net(torch.cat(inputs)).split(1))  # one batch: the same per image
            t0 = time.perf_counter()
            cm(inputs[0])  # the first call creates the sub-network's sessions
            first = time.perf_counter() - t0
            diff = max((cm(xi) - r).abs().max().item() for xi, r in zip(inputs, refs))
            scale = max(r.abs().max().item() for r in refs)
            saved[f"ref{k}"] = torch.cat(refs).numpy()
            eager = ours = math.nan
            if args.rounds:
                torch.set_num_threads(args.threads)
                eager, ours = (block_ms(net, cm, inputs[0], args.rounds, args.blocks)
                               if args.blocks else
                               interleaved_ms(net, cm, inputs[0], args.rounds))
                torch.set_num_threads(1)
                speedups.append(eager / ours)
        firsts.append(refs[0])
        comb = "-".join(map(str, cfg["comb_id"]))
        stitch = ",".join(f"{a}>{b}" for a, b in cfg["stitch_cfgs"]) or "anchor"
        print(f"{k:>3} {comb:<8} {stitch:<12} {net.get_model_size(k) / 1e6:>8.2f} {scale:>10.3g} "
              f"{diff:>10.2e} {first:>10.2f} {eager:>9.2f} {ours:>10.2f} {eager / ours:>6.2f}",
              flush=True)
    if len(firsts) > 1:
        apart = min((a - b).abs().max().item() for i, a in enumerate(firsts)
                    for b in firsts[:i])
        print(f"the two closest sub-networks differ by {apart:.2e} on the first input "
              "(max abs)")
    if speedups:
        print(f"geomean speedup over eager: "
              f"{math.exp(statistics.mean(map(math.log, speedups))):.2f}x")
    return saved


def sizes(net, cm, ids: list[int], refs: dict, args) -> None:
    """The one artifact against the largest sub-network's own and the sum of all of them;
    the lower bound the anchors' disjoint weights imply; every stitch id run by
    dycomp.runtime in a fresh process."""
    tmp = Path(tempfile.mkdtemp(prefix="snnet_"))
    t0 = time.perf_counter()
    one = size(cm.save(tmp / "snnet.dyc"))
    print(f"saved in {time.perf_counter() - t0:.1f} s")
    own = []
    for i, sub in enumerate(cm.subnets.values()):  # saved, measured, removed one at a time
        own.append(size(sub.save(tmp / f"sub{i}.dyc")))
        shutil.rmtree(tmp / f"sub{i}.dyc")
    big = max(range(len(ids)), key=lambda i: own[i])
    print(f"one artifact: {one / 1e6:.2f} MB = {one / own[big]:.3f}x the largest sub-network's"
          f" own (stitch id {ids[big]}, {own[big] / 1e6:.2f} MB); the {len(own)} artifacts it"
          f" replaces: {sum(own) / 1e6:.2f} MB ({one / sum(own):.3f}x)")
    if len(ids) == net.num_configs:  # every parameter is some stitch id's
        total = sum(p.numel() for p in net.parameters())
        used = max(net.get_model_size(k) for k in ids)
        print(f"lower bound: all {total / 1e6:.2f} M parameters over the largest sub-network's"
              f" {used / 1e6:.2f} M = {total / used:.3f}x (the anchors' weights are disjoint)")
    w = json.loads((tmp / "snnet.dyc" / "manifest.json").read_text())["weights"]
    print(f"weight store: {w['tensors']} distinct tensors ({w['bytes'] / 1e6:.2f} MB) for "
          f"{w['references']} references, {w['blocks']} of them blocks of a larger one")
    np.savez(tmp / "refs.npz", **refs)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "snnet_loaded.py"), str(tmp),
                    "--threads", str(args.threads), "--max-live", str(args.max_live)],
                   check=True)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
