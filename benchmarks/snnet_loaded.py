"""The loaded half of `benchmarks/snnet.py`, in a fresh process without torch.

    python benchmarks/snnet_loaded.py DIR [--threads 2] [--max-live 8]

Loads `DIR/snnet.dyc` with `dycomp.runtime.load` (weights.bin memory-mapped, sessions
created on first call, at most `--max-live` sub-networks alive), runs every stitch id
saved in `DIR/refs.npz` on its inputs and prints the max abs difference from the eager
outputs saved there, the load and run times and this process's RSS (now and peak).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dycomp.runtime import load  # noqa: E402


def memory() -> str:
    """This process's resident memory now and at its peak (VmRSS, VmHWM: a fresh
    process's own, where `ru_maxrss` would report its parent's peak at the fork)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    now, peak = (int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))
    return f"RSS {now / 1e9:.2f} GB, peak {peak / 1e9:.2f} GB"


def run_loaded(tmp: Path, threads: int, max_live: int) -> None:
    """In a fresh process: load the artifact with dycomp.runtime, run every stitch id on
    the saved inputs, compare with the saved eager outputs."""
    data = np.load(tmp / "refs.npz")
    t0 = time.perf_counter()
    rt = load(tmp / "snnet.dyc", threads=threads, max_live_subnets=max_live)
    print(f"loaded with dycomp.runtime in {time.perf_counter() - t0:.1f} s ({memory()}); "
          f"{len(rt.live())} sub-networks live")
    inputs, worst, n = data["inputs"], 0.0, 0
    for name in data.files:
        if not name.startswith("ref"):
            continue
        rt.reset_stitch_id(int(name[3:]))
        for x, ref in zip(inputs, data[name]):
            worst = max(worst, float(abs(rt(x[None]) - ref[None]).max()))
            n += 1
    print(f"loaded, every id run: {n} calls ({len(data.files) - 1} ids x {len(inputs)} inputs)"
          f" in {time.perf_counter() - t0:.0f} s, max|diff| {worst:.2e}; {memory()}; "
          f"{len(rt.live())} sub-networks live (max_live_subnets={max_live})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-live", type=int, default=8)
    args = ap.parse_args()
    run_loaded(args.dir, args.threads, args.max_live)
    assert "torch" not in sys.modules


if __name__ == "__main__":
    main()
