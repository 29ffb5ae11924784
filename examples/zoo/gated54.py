"""54 independently gated residual MLP blocks on a 1x64 vector.

Each block has its own gate, computed from the block's input
(``g = torch.sigmoid(gate(x))``); ``if g > 0.5`` the pre-norm residual block runs,
else the input passes through unchanged. 54 independent binary decisions give
2^54 possible paths: a compiler must merge them (O(n) subgraphs), never
enumerate them.

Random weights; gate biases are set in ``make()`` (sequentially, on a fixed
calibration batch) so that every gate is open for about half of the inputs.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn as nn


class MLPBlock(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Gated54(nn.Module):
    def __init__(self, dim=64, hidden=64, num_blocks=54, num_classes=10):
        super().__init__()
        self.gates = nn.ModuleList([nn.Linear(dim, 1) for _ in range(num_blocks)])
        self.blocks = nn.ModuleList([MLPBlock(dim, hidden) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        for gate, block in zip(self.gates, self.blocks):
            g = torch.sigmoid(gate(x))
            if g > 0.5:
                x = x + block(x)
        return self.head(self.norm(x))


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def _vector(g: torch.Generator) -> torch.Tensor:
    scale = math.exp(2.0 * torch.rand((), generator=g).item() - 1.0)
    return scale * torch.randn(1, 64, generator=g)


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(_vector(g),) for _ in range(n)]


@torch.no_grad()
def _calibrate(model: Gated54, x: torch.Tensor) -> None:
    """Batched replay of forward; each gate bias is set to open for half the batch."""
    for gate, block in zip(model.gates, model.blocks):
        z = gate(x)[:, 0]
        gate.bias.sub_(z.median())
        on = torch.sigmoid(gate(x)) > 0.5
        x = torch.where(on, x + block(x), x)


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gated54().eval()
    calib = torch.cat([t[0] for t in sample_inputs(512, seed=10_000 + seed)])
    _calibrate(model, calib)
    return model, sample_inputs(1, seed=seed)[0]


@torch.no_grad()
def path_key(model, inputs: tuple, output):
    """Tuple of 54 gate decisions (1 = block ran), recomputed with forward pre-hooks."""
    ran = [0] * len(model.blocks)
    handles = []
    for i, block in enumerate(model.blocks):

        def hook(module, args, i=i):
            ran[i] = 1

        handles.append(block.register_forward_pre_hook(hook))
    try:
        model(*inputs)
    finally:
        for hd in handles:
            hd.remove()
    return tuple(ran)


# Number of distinct gate patterns over sample_inputs(200) for make(0) (measured).
PATHS = 200


if __name__ == "__main__":
    model, example = make()
    keys = [path_key(model, inp, None) for inp in sample_inputs(200)]
    counts = Counter(keys)
    print(f"{len(counts)} distinct gate patterns over 200 inputs")
    on = [sum(k[i] for k in keys) for i in range(len(keys[0]))]
    print(f"per-block 'on' count (of 200): min {min(on)} max {max(on)}")
    print(on)
    n_on = [sum(k) for k in keys]
    print(f"blocks on per input: min {min(n_on)} max {max(n_on)}")
