"""andreasveit/convnet-aig: ResNet-110 (CIFAR) with Gumbel-softmax gates per block.

`convnet_aig.ResNet110_cifar()`, called `m(x, temperature=1)` -> `(logits, gates)`.
The repository feeds `BatchNorm1d` 4-D input (PyTorch 0.3): the adapter swaps in a
subclass whose `_check_input_dim` accepts it. Its Gumbel noise is sampled in eval too
(`GumbleSoftmax.sample_gumbel_like`); to compare exactly the adapter turns the noise
off by replacing that method on the class at run time with one that returns zeros
(`DYCOMP_CORPUS_AIG_NOISE=1` keeps the noise; then compare gate frequencies instead).
The path is the tuple of the 54 gate values (block executed or skipped).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from torch import nn

from benchmarks.corpus.common import Case, on_path, repo_dir, seed_all

NAME = "convnet-aig"
REPO = "andreasveit/convnet-aig"
COMMIT = "47633cd463f4ac92f05152d825b601f1e8bf09fe"
DIR = "convnet-aig"
N_INPUTS = 100
NOISE = os.environ.get("DYCOMP_CORPUS_AIG_NOISE", "0") == "1"


class BatchNorm1d4d(nn.BatchNorm1d):
    """BatchNorm1d that accepts the 4-D input PyTorch 0.3 let through."""

    def _check_input_dim(self, input):
        pass


_ORIGINAL: dict = {}


def _no_noise(self, template_tensor, eps=1e-10):
    """Gumbel noise turned off: the gates become the argmax of the gate logits."""
    return torch.zeros_like(template_tensor)


def build(src: Path, noise: bool = NOISE) -> Case:
    root = repo_dir(src, DIR)
    with on_path(root):
        aig = importlib.import_module("convnet_aig")
        gumbel = importlib.import_module("gumbelmodule")
    if "sample_gumbel_like" not in _ORIGINAL:
        _ORIGINAL["sample_gumbel_like"] = gumbel.GumbleSoftmax.sample_gumbel_like
    gumbel.GumbleSoftmax.sample_gumbel_like = (
        _ORIGINAL["sample_gumbel_like"] if noise else _no_noise)
    seed_all(0)
    real_bn1d = aig.nn.BatchNorm1d
    aig.nn.BatchNorm1d = BatchNorm1d4d
    try:
        m = aig.ResNet110_cifar().eval()
    finally:
        aig.nn.BatchNorm1d = real_bn1d

    def make_input(i: int):
        g = torch.Generator().manual_seed(3000 + i)
        return (torch.randn(1, 3, 32, 32, generator=g),), {"temperature": 1}

    def path_of(out):
        _, gates = out
        return tuple(int(g.item() > 0.5) for g in gates)

    notes = ["BatchNorm1d accepts 4-D input (adapter subclass)",
             "Gumbel noise " + ("ON (sampled per call)" if noise else
                                "OFF (sample_gumbel_like patched to zeros)")]
    return Case(fn=m, make_input=make_input, path_of=path_of, notes=notes)
