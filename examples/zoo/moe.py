"""Top-1 mixture of experts at batch 1 (Switch-Transformer-style routing).

Two pre-norm MoE layers in sequence, each with a residual connection. Each layer's
router scores 4 experts; the host picks one with
``idx = int(torch.argmax(self.router(h), -1).item())`` and runs only
``self.experts[idx]`` (a data-dependent index into an ``nn.ModuleList``), scaled by
its router probability. The model returns the logits and a Python list of the
expert indices chosen per layer.

Random weights; router biases are balanced in ``make()`` (bias-only load balancing
on a fixed calibration batch, as in auxiliary-loss-free balancing) so that every
expert is chosen for about a quarter of the random inputs.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


class Expert(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class MoELayer(nn.Module):
    def __init__(self, dim=32, num_experts=4, hidden=64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, num_experts)
        self.experts = nn.ModuleList([Expert(dim, hidden) for _ in range(num_experts)])

    def forward(self, x):
        h = self.norm(x)
        logits = self.router(h)
        probs = F.softmax(logits, dim=-1)
        idx = int(torch.argmax(logits, -1).item())
        y = self.experts[idx](h)
        y = y * probs[0, idx]
        return x + y, idx


class MoENet(nn.Module):
    def __init__(self, in_dim=16, dim=32, num_layers=2, num_experts=4, num_classes=10):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList([MoELayer(dim, num_experts) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x)
        routes = []
        for layer in self.layers:
            x, idx = layer(x)
            routes.append(idx)
        return self.head(self.norm(x)), routes


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.randn_inputs(n, seed, (1, 16))


@torch.no_grad()
def _calibrate(model: MoENet, x: torch.Tensor, iters: int = 300) -> None:
    """Per layer: nudge router biases until the top-1 assignment is balanced."""
    x = model.embed(x)
    for layer in model.layers:
        h = layer.norm(x)
        raw = h @ layer.router.weight.T
        n_exp = raw.shape[1]
        bias = torch.zeros(n_exp)
        step = 0.5 * raw.std().item()
        for _ in range(iters):
            frac = F.one_hot((raw + bias).argmax(-1), n_exp).float().mean(0)
            bias += step * (1.0 / n_exp - frac)
            step *= 0.98
        layer.router.bias.copy_(bias)
        logits = layer.router(h)
        probs = F.softmax(logits, -1)
        idx = logits.argmax(-1)
        ys = torch.stack([e(h) for e in layer.experts], 1)  # (N, E, D)
        y = ys[torch.arange(h.shape[0]), idx] * probs.gather(1, idx[:, None])
        x = x + y


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(MoENet, seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 512, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Tuple of the expert index chosen in each MoE layer."""
    _, routes = output
    return tuple(routes)


PATHS = {(i, j) for i in range(4) for j in range(4)}


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    counts = common.print_frequencies(keys, "routes")
    for layer in range(len(keys[0])):
        c = Counter(k[layer] for k in keys)
        print(f"layer {layer} expert counts:", dict(sorted(c.items())))
    common.print_table(counts, 8)
