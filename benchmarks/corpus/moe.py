"""davidmrau/mixture-of-experts: sparsely gated MoE (top-4 of 10 experts, data-dependent splits).

`moe.MoE(input_size=3072, output_size=10, num_experts=10, hidden_size=128,
noisy_gating=True, k=4)` in eval mode (its noisy gating adds noise only in training).
`w_gate` is initialized with `normal_(std=0.05)`: its zero init makes top-k all ties.
The path is the set of experts each row is routed to.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from benchmarks.corpus.common import Case, on_path, repo_dir, seed_all

NAME = "moe"
REPO = "davidmrau/mixture-of-experts"
COMMIT = "f662999727109357c42074997e9a6cd72806f668"
DIR = "mixture-of-experts"
N_INPUTS = 100
BATCH = int(os.environ.get("DYCOMP_CORPUS_MOE_BATCH", "1"))


def build(src: Path) -> Case:
    root = repo_dir(src, DIR)
    with on_path(root):
        moe = importlib.import_module("moe")
    seed_all(0)
    m = moe.MoE(input_size=3072, output_size=10, num_experts=10, hidden_size=128,
                noisy_gating=True, k=4)
    with torch.no_grad():
        m.w_gate.normal_(std=0.05)
    m.eval()

    last: dict = {}

    def make_input(i: int):
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(BATCH, 3072, generator=g)
        last["x"] = x
        return (x,), {}

    def path_of(out):
        # The outputs do not show the routing: recompute it from the input last made
        # (run.py runs eager on each input right after making it).
        with torch.no_grad():
            gates, _ = m.noisy_top_k_gating(last["x"], False)
        return tuple(tuple(torch.nonzero(row).flatten().tolist()) for row in gates)

    return Case(fn=m, make_input=make_input, path_of=path_of,
                notes=[f"eval mode, batch {BATCH}, w_gate ~ N(0, 0.05)"])
