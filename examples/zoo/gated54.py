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

import torch
import torch.nn as nn

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


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


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.randn_inputs(n, seed, (1, 64))


@torch.no_grad()
def _calibrate(model: Gated54, x: torch.Tensor) -> None:
    """Batched replay of forward; each gate bias is set to open for half the batch."""
    for gate, block in zip(model.gates, model.blocks):
        z = gate(x)[:, 0]
        gate.bias.sub_(z.median())
        on = torch.sigmoid(gate(x)) > 0.5
        x = torch.where(on, x + block(x), x)


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(Gated54, seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 512, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Tuple of 54 gate decisions (1 = block ran), recomputed with forward hooks."""
    ran = set(common.record(model, inputs, model.blocks, lambda i, args, out: i))
    return tuple(int(i in ran) for i in range(len(model.blocks)))


# Number of distinct gate patterns over sample_inputs(200) for make(0) (measured).
PATHS = 200


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    common.print_frequencies(keys, "gate patterns")
    on = [sum(k[i] for k in keys) for i in range(len(keys[0]))]
    print(f"per-block 'on' count (of 200): min {min(on)} max {max(on)}")
    print(on)
    n_on = [sum(k) for k in keys]
    print(f"blocks on per input: min {min(n_on)} max {max(n_on)}")
