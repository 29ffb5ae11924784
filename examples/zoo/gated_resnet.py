"""Gated residual network (SkipNet / ConvNet-AIG style), 18 self-gating blocks.

Every residual block decides *inside its own forward* whether to run: a tiny gate
(global average pool -> Linear -> sigmoid) looks at the block input, and the block
either returns ``relu(x + body(x))`` or returns ``x`` unchanged. The body uses
in-place ops (``nn.ReLU(inplace=True)``, ``out += identity``). Three stages of six
blocks, with ungated strided transitions between stages.

Random weights; the gate biases are set in ``make()`` (from a fixed calibration
batch) so that every gate is open for about half of the random inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class GatedBlock(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(planes, planes),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            conv3x3(planes, planes),
            nn.BatchNorm2d(planes),
        )
        self.gate = nn.Linear(planes, 1)

    def forward(self, x):
        g = torch.sigmoid(self.gate(x.mean((2, 3))))
        if g > 0.5:
            identity = x
            out = self.body(x)
            out += identity
            return F.relu(out)
        return x


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = conv3x3(cin, cout, stride=2)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class GatedResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), blocks_per_stage=6, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(
            conv3x3(3, widths[0], stride=2), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        layers = []
        cin = widths[0]
        for stage, planes in enumerate(widths):
            if stage > 0:
                layers.append(Transition(cin, planes))
            for b in range(blocks_per_stage):
                layers.append(self.block(stage * blocks_per_stage + b, planes))
            cin = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def block(self, index: int, planes: int) -> nn.Module:
        """The gated block at position ``index`` (variants override this)."""
        return GatedBlock(planes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.image_inputs(n, seed)


def _gated_blocks(model: GatedResNet) -> list[GatedBlock]:
    return [m for m in model.layers if isinstance(m, GatedBlock)]


@torch.no_grad()
def _calibrate(model: GatedResNet, x: torch.Tensor) -> None:
    """Batched replay of forward; each gate bias is set to open for half the batch."""
    h = model.stem(x)
    for layer in model.layers:
        if not isinstance(layer, GatedBlock):
            h = layer(h)
            continue
        z = layer.gate(h.mean((2, 3)))[:, 0]
        layer.gate.bias.sub_(z.median())
        z = layer.gate(h.mean((2, 3)))[:, 0]
        on = (torch.sigmoid(z) > 0.5).view(-1, 1, 1, 1)
        h = torch.where(on, F.relu(layer.body(h) + h), h)


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(GatedResNet, seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 256, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Tuple of 18 gate decisions (1 = block ran), recomputed with forward hooks."""
    ran = common.record(model, inputs, _gated_blocks(model),
                        lambda i, args, out: int(out is not args[0]))
    return tuple(ran)


# Number of distinct gate patterns over sample_inputs(200) for make(0) (measured).
PATHS = 146


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    counts = common.print_frequencies(keys, "gate patterns")
    common.print_block_usage(keys, "on")
    print("most common patterns:", counts.most_common(3))
