"""A-ViT (NVlabs/A-ViT): DeiT-T with adaptive per-token halting, random weights.

Side packages: the repository ships its own timm copy (first on `sys.path`); that copy
imports torchvision, whose pure-Python parts come from the folder `dynamicvit` uses:

    pip install --no-deps --target SRC/_site/torchvision028 torchvision==0.28.0

`models_act.avit_tiny_patch16_224` with the training defaults (`act_mode=4,
gate_scale=100, gate_center=3`, `distr_prior_alpha=0`, which avoids scipy); `m(x)` runs
`forward_features_act_token`: each token halts once its cumulative halting score reaches
1 - eps, and later layers see it masked (`out.data = out.data * mask`). No host
decision: the path is the number of layers each token ran (`counter_token` after an
eager call). Shims: `torch._six`, `.cuda()`.
"""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import torch

from benchmarks.corpus.common import (
    Case,
    on_path,
    repo_dir,
    seed_all,
    shim_cuda,
    shim_six,
    shim_torchvision,
)
from benchmarks.corpus.dynamicvit import image

NAME = "a-vit"
REPO = "NVlabs/A-ViT"
COMMIT = "120c9cb90acf86828f1c61dd42c08722aa7173c7"
DIR = "A-ViT"
N_INPUTS = 100


def halting(model):
    """A `path_of` giving how many layers each token ran in the last eager call (hashed)."""
    return lambda out: hash(tuple(model.counter_token.reshape(-1).int().tolist())) % 10**6


def build(src: Path) -> Case:
    root = repo_dir(src, DIR)
    shim_six()
    shim_cuda()
    tv = shim_torchvision(src)
    for name in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
        del sys.modules[name]  # the repository's own timm copy, not timm 1.0
    with on_path(root, tv):
        import models_act
        seed_all(0)
        args = Namespace(act_mode=4, gate_scale=100.0, gate_center=3.0, distr_prior_alpha=0.0)
        m = models_act.avit_tiny_patch16_224(args=args).eval()
    with torch.no_grad():
        m(image(0)[0][0])  # creates the per-batch-size token buffers (`self.c_token`, ...)
    return Case(fn=m, make_input=image, path_of=halting(m),
                notes=["path: layers run per token (counter_token), hashed",
                       "shims: torch._six, .cuda()"])
