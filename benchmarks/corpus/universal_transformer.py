"""andreamad8/Universal-Transformer-Pytorch: bAbI Universal Transformer with ACT halting.

`models.UTransformer.BabiUTransformer(num_vocab=160, embedding_size=128, hidden_size=128,
num_layers=6, num_heads=2, total_key_depth=128, total_value_depth=128, filter_size=128,
act=True)`, called `m(story, query)`. The ACT loop `while ((halting_probability <
threshold) & (n_updates < max_hop)).byte().any()` runs 2-6 times with the default init.
The path is the number of updates per position (`n_updates`). Shims: `.cuda()`, `np.float`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from benchmarks.corpus.common import Case, on_path, repo_dir, seed_all, shim_cuda, shim_np_float

NAME = "universal-transformer"
REPO = "andreamad8/Universal-Transformer-Pytorch"
COMMIT = "e6b06375269e805a23acbb07ef1aa4d6402bce52"
DIR = "Universal-Transformer-Pytorch"
N_INPUTS = 100
STORY_LEN = 10


def build(src: Path) -> Case:
    root = repo_dir(src, DIR)
    shim_np_float()
    shim_cuda()
    with on_path(root):
        ut = importlib.import_module("models.UTransformer")
    seed_all(0)
    m = ut.BabiUTransformer(num_vocab=160, embedding_size=128, hidden_size=128, num_layers=6,
                            num_heads=2, total_key_depth=128, total_value_depth=128,
                            filter_size=128, act=True).eval()

    def make_input(i: int):
        g = torch.Generator().manual_seed(2000 + i)
        story = torch.randint(1, 160, (1, STORY_LEN, 6), generator=g)
        query = torch.randint(1, 160, (1, 6), generator=g)
        return (story, query), {}

    def path_of(out):
        _, _, (_, n_updates) = out
        return tuple(int(v) for v in n_updates.flatten().tolist())

    return Case(fn=m, make_input=make_input, path_of=path_of,
                notes=[f"story length {STORY_LEN}; shims: .cuda(), np.float"])
