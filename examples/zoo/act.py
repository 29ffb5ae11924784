"""Adaptive Computation Time (Graves 2016) style halting loop.

A GRU cell is applied repeatedly to the same (embedded) 1x16 input. After every
step a halting unit emits ``p = sigmoid(halt(h) + step_bias[n])``; these accumulate
in ``halting`` and the loop stops as soon as ``halting.item() > 1 - eps`` or after
``max_steps``. The output is the halting-weighted mean state; the model also
returns the number of steps taken (a Python int).

The halting unit has a learned per-step bias ``step_bias[n]`` (a prior over the
number of ponder steps) indexed by the Python loop counter. Random weights; the
per-step biases are set in ``make()`` (from a fixed calibration batch) so that
random inputs halt after every step count from 1 to ``max_steps``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


class ACTNet(nn.Module):
    def __init__(self, in_dim=16, hidden=32, num_classes=10, max_steps=8, eps=0.01):
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.halt = nn.Linear(hidden, 1)
        self.step_bias = nn.Parameter(torch.zeros(max_steps))  # learned prior over ponder steps
        self.out = nn.Linear(hidden, num_classes)
        self.max_steps = max_steps
        self.eps = eps

    def forward(self, x):
        x = torch.tanh(self.embed(x))
        h = x.new_zeros(x.size(0), self.cell.hidden_size)
        state = torch.zeros_like(h)
        halting = 0.0
        n = 0
        while n < self.max_steps:
            h = self.cell(x, h)
            p = torch.sigmoid(self.halt(h) + self.step_bias[n])
            halting = halting + p
            state = state + p * h
            n += 1
            if halting.item() > 1 - self.eps:
                break
        out = self.out(state / halting)
        return out, n


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.randn_inputs(n, seed, (1, 16))


@torch.no_grad()
def _calibrate(model: ACTNet, x: torch.Tensor) -> None:
    """Pick the halting unit's gain and per-step biases so that step counts 1..max_steps all occur.

    The recurrent trajectory does not depend on the halting unit, so the halting
    logits of every step are computed once. ``step_bias[0]`` lets the top 1/max_steps
    of inputs halt after one step; the later biases follow a ramp ``b + r * t`` whose
    gain, offset and slope are chosen on a grid to spread the remaining step counts.
    """
    x = torch.tanh(model.embed(x))
    h = torch.zeros(x.shape[0], model.cell.hidden_size)
    logits = []
    for _ in range(model.max_steps):
        h = model.cell(x, h)
        logits.append(model.halt(h)[:, 0] - model.halt.bias)
    raw = torch.stack(logits, 1)  # (N, T) halting logits without bias
    mu, sd = raw.mean().item(), raw.std().item()
    z = (raw - mu) / sd
    n_steps = model.max_steps
    thr = 1 - model.eps
    t = torch.arange(n_steps, dtype=z.dtype)
    b = torch.linspace(-10.0, 2.0, 25)
    r = torch.linspace(0.0, 4.0, 17)
    best = (-math.inf, 0.0, 0.0, 0.0, 0.0)
    for gain in (2.0, 4.0, 6.0, 8.0):
        b0 = math.log(thr / (1 - thr)) - torch.quantile(gain * z[:, 0], 1 - 1 / n_steps).item()
        logit = gain * z + b[:, None, None, None] + r[None, :, None, None] * t
        logit[..., 0] = gain * z[:, 0] + b0
        done = torch.sigmoid(logit).cumsum(-1) > thr
        done[..., -1] = True
        freq = F.one_hot(done.float().argmax(-1), n_steps).float().mean(2)
        score = -(freq * freq.clamp_min(1e-12).log()).sum(-1) + 2.0 * freq.clamp_max(0.06).sum(-1)
        i, j = divmod(int(score.argmax()), len(r))
        if score[i, j] > best[0]:
            best = (score[i, j].item(), gain, b0, b[i].item(), r[j].item())
    _, gain, b0, b_best, r_best = best
    step_bias = b_best + r_best * t
    step_bias[0] = b0
    # gain * (w.h - mu) / sd + step_bias  ==  (gain / sd) * w.h + (step_bias - gain * mu / sd)
    model.halt.weight.mul_(gain / sd)
    model.halt.bias.zero_()
    model.step_bias.copy_(step_bias - gain * mu / sd)


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(ACTNet, seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 256, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Number of recurrent steps taken (1 .. max_steps)."""
    _, n = output
    return n


PATHS = set(range(1, 9))  # 1 .. max_steps


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    common.print_frequencies(keys, "step counts", 4)
