"""DynamicViT (raoyongming/DynamicViT): DeiT-S with token pruning, random weights.

Side packages (its `utils.py` imports timm and tensorboardX), installed once beside the
repository:

    pip install --no-deps --target SRC/_site/timm1031 timm==1.0.31 pyyaml \
        huggingface_hub safetensors tensorboardX
    pip install --no-deps --target SRC/_site/torchvision028 torchvision==0.28.0

(the torchvision wheel is a CUDA build: only its pure-Python parts are used, see
`shim_torchvision`).

`VisionTransformerDiffPruning` with the DeiT-S configuration of `infer.py`; in eval it
keeps the `argsort(score)[:, :num_keep]` best tokens at blocks 3, 6 and 9 (197 -> 138 ->
97 -> 68). No host decision: the kept-token sets (the path) differ on every input, and
are read by forward hooks on the score predictors (eager calls only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from benchmarks.corpus.common import (
    Case,
    on_path,
    repo_dir,
    seed_all,
    shim_six,
    shim_torchvision,
    site_dir,
)

NAME = "dynamicvit"
REPO = "raoyongming/DynamicViT"
COMMIT = "1322e626d1e9eca18cc150569908fb4af29e15f7"
DIR = "DynamicViT"
N_INPUTS = 100
SITE = "timm1031"
KEEP = (0.7, 0.49, 0.343)


def image(i: int) -> tuple[tuple, dict]:
    """The i-th input: one 224x224 RGB image of standard normal noise."""
    g = torch.Generator().manual_seed(2000 + i)
    return (torch.randn(1, 3, 224, 224, generator=g),), {}


def kept_tokens(model) -> callable:
    """A `path_of` giving the kept-token sets of the last eager call (a hash of each)."""
    seen: list = []

    def hook(module, args, out):
        score = out.reshape(1, -1, 2)[:, :, 0]
        n = int(196 * KEEP[len(seen) % 3])
        seen.append(tuple(sorted(torch.argsort(score, dim=1, descending=True)[0, :n].tolist())))

    for p in model.score_predictor:
        p.register_forward_hook(hook)

    def path_of(out):
        sets = tuple(hash(s) % 10**6 for s in seen[-3:])
        seen.clear()
        return sets
    return path_of


def build(src: Path) -> Case:
    root = repo_dir(src, DIR)
    shim_six()
    with on_path(root, site_dir(src, SITE), shim_torchvision(src)):
        sys.modules.pop("utils", None)  # the repository's own utils.py
        from models.dyvit import VisionTransformerDiffPruning
        seed_all(0)
        m = VisionTransformerDiffPruning(
            patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True,
            pruning_loc=[3, 6, 9], token_ratio=list(KEEP)).eval()
    return Case(fn=m, make_input=image, path_of=kept_tokens(m),
                notes=["path: hashes of the kept-token sets at blocks 3, 6, 9"])
