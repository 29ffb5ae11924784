"""Gated residual network with multiplicative gates (SkipNet / ConvNet-AIG as trained).

18 residual blocks in three stages of six, with ungated strided transitions between
stages. Every block has a feed-forward gate (global average pool -> Linear ->
sigmoid) thresholded into a hard 0/1 mask ``m``, but no block *branches* on it:
the mask is multiplied in, the way these networks are written for training and
then deployed unchanged. The whole ``forward`` is straight-line tensor code, so
every block's body always runs; whether its result is used depends on ``m``.
The blocks cycle through three ways of writing the gate:

* ``MulGateBlock``:   ``x = m * F.relu(self.body(x) + x) + (1 - m) * x``
* ``WhereGateBlock``: ``x = torch.where(m > 0.5, F.relu(self.body(x) + x), x)``
* ``AddGateBlock``:   ``x = x + m * self.body(x)``

In training mode the mask is a straight-through estimator
(``m = hard - p.detach() + p``); in eval mode it is the hard 0/1 gate.

Random weights; the gate biases are set in ``make()`` (block by block, on a fixed
256-image calibration batch) so that each gate logit is negative, i.e. the gate is
off, for a fraction ``off_rate`` = 0.6 of the calibration batch (153 or 154 of 256).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common, gated_resnet
else:  # run as a script, or loaded by path: common.py is a sibling
    import common
    import gated_resnet


class GatedBlock(gated_resnet.GatedBlock):
    """gated_resnet's block (residual body + feed-forward gate); subclasses apply the
    mask instead of branching on it."""

    def mask(self, x):
        p = torch.sigmoid(self.gate(x.mean((2, 3))))
        m = (p > 0.5).float().view(-1, 1, 1, 1)
        if self.training:  # straight-through estimator
            m = m - p.detach().view(-1, 1, 1, 1) + p.view(-1, 1, 1, 1)
        return m


class MulGateBlock(GatedBlock):
    def forward(self, x):
        m = self.mask(x)
        return m * F.relu(self.body(x) + x) + (1 - m) * x


class WhereGateBlock(GatedBlock):
    def forward(self, x):
        m = self.mask(x)
        return torch.where(m > 0.5, F.relu(self.body(x) + x), x)


class AddGateBlock(GatedBlock):
    def forward(self, x):
        m = self.mask(x)
        return x + m * self.body(x)


GATE_FORMS = (MulGateBlock, WhereGateBlock, AddGateBlock)


class GatedMulResNet(gated_resnet.GatedResNet):
    """gated_resnet's network with the three multiplicative gate forms, in turn."""

    def block(self, index: int, planes: int) -> nn.Module:
        return GATE_FORMS[index % 3](planes)


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.image_inputs(n, seed)


def _gated_blocks(model: GatedMulResNet) -> list[GatedBlock]:
    return [m for m in model.layers if isinstance(m, GatedBlock)]


@torch.no_grad()
def _calibrate(model: GatedMulResNet, x: torch.Tensor, off_rate: float) -> None:
    """Batched replay of forward; each gate bias is set so the gate is off for a fraction
    ``off_rate`` of the batch (the blocks are batch-agnostic, so the replay calls them)."""
    h = model.stem(x)
    for layer in model.layers:
        if isinstance(layer, GatedBlock):
            z = layer.gate(h.mean((2, 3)))[:, 0]
            layer.gate.bias.sub_(torch.quantile(z, off_rate))
        h = layer(h)


def make(seed: int = 0, widths=(16, 32, 64), blocks_per_stage: int = 6,
         off_rate: float = 0.6) -> tuple[nn.Module, tuple]:
    """The model (gates calibrated to be off for ``off_rate`` of the inputs) and an input.

    ``widths`` / ``blocks_per_stage`` build heavier (or lighter) variants for benchmarks.
    """
    model = common.seeded(lambda: GatedMulResNet(widths, blocks_per_stage), seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 256, seed), off_rate)
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Tuple of gate bits (1 = block's update used), one per gated block, recomputed with
    forward hooks on the gate Linears (``sigmoid(logit) > 0.5``, as in ``mask``)."""
    bits = common.record(model, inputs, [b.gate for b in _gated_blocks(model)],
                         lambda i, args, out: int(torch.sigmoid(out).item() > 0.5))
    return tuple(bits)


# Number of distinct gate patterns over sample_inputs(200) for make(0) (measured).
PATHS = 137


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    counts = common.print_frequencies(keys, "gate patterns")
    common.print_block_usage(keys, "on")
    off = 1 - sum(map(sum, keys)) / (len(keys) * len(keys[0]))
    print(f"gates off overall: {100 * off:.1f}% (target 60%)")
    print("most common patterns:", counts.most_common(3))
