"""Multi-exit ResNet-style CNN (BranchyNet / MSDNet-style early exiting).

A small CIFAR-sized ResNet with a classifier head after every residual block.
``forward`` returns from inside the loop over ``self.blocks`` as soon as a head
is confident enough; ``early_exit`` is a second entry point with its own
threshold that keeps a Python list of per-exit confidences and, when no head
is confident, falls back to the most confident head via ``np.argmax``.

Random weights; the heads are temperature-scaled in ``make()`` (from a fixed
calibration batch) so that random inputs leave through every exit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common

NUM_CLASSES = 10


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class ExitHead(nn.Module):
    def __init__(self, planes, num_classes=NUM_CLASSES):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x):
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class MultiExitResNet(nn.Module):
    def __init__(self, widths=(16, 16, 32, 32, 64), strides=(1, 1, 2, 1, 2), threshold=0.5):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks = []
        heads = []
        in_planes = widths[0]
        for planes, stride in zip(widths, strides):
            blocks.append(BasicBlock(in_planes, planes, stride))
            heads.append(ExitHead(planes))
            in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        self.threshold = threshold
        self.exit_threshold = 0.6

    def forward(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            logits = self.heads[i](x)
            conf = F.softmax(logits, -1).max()
            if conf >= self.threshold:
                return logits, i, True
        return logits, len(self.blocks) - 1, False

    def early_exit(self, x):
        """Inference-only entry point: logits only, stricter threshold, best-head fallback."""
        x = self.stem(x)
        confs = []
        outputs = []
        for block, head in zip(self.blocks, self.heads):
            x = block(x)
            logits = head(x)
            conf = F.softmax(logits, dim=1).max().item()
            confs.append(conf)
            outputs.append(logits)
            if conf > self.exit_threshold:
                return logits
        best = int(np.argmax(confs))
        return outputs[best]


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"
EARLY_EXIT = "early_exit"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.image_inputs(n, seed)


@torch.no_grad()
def _calibrate(model: MultiExitResNet, x: torch.Tensor) -> None:
    """Temperature-scale every head so that a similar share of inputs leaves at each exit.

    The confidence max(softmax(s * z)) grows monotonically with s, so a bisection on
    log(s) hits a target exit rate among the inputs still running at that exit.
    """
    n_exits = len(model.blocks)
    alive = torch.ones(x.shape[0], dtype=torch.bool)
    h = model.stem(x)
    for i, (block, head) in enumerate(zip(model.blocks, model.heads)):
        h = block(h)
        z = head(h)[alive]
        # exits 0..n-2 take 1/(n+1) of all inputs each; the last head splits the rest 50/50
        target = 1.0 / (n_exits + 1 - i) if i < n_exits - 1 else 0.5
        lo, hi = -8.0, 8.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            rate = (F.softmax(z * math.exp(mid), -1).amax(-1) >= model.threshold).float().mean()
            if rate > target:
                hi = mid
            else:
                lo = mid
        s = math.exp(0.5 * (lo + hi))
        head.fc.weight.mul_(s)
        head.fc.bias.mul_(s)
        conf = F.softmax(head(h), -1).amax(-1)
        alive &= conf < model.threshold


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(MultiExitResNet, seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 256, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    _, exit_id, confident = output
    return (exit_id, confident)


PATHS = {(0, True), (1, True), (2, True), (3, True), (4, True), (4, False)}


@torch.no_grad()
def path_key_early_exit(model, inputs: tuple, output):
    """Exit taken by ``early_exit``: an int, or ("best", j) for the argmax fallback."""
    (x,) = inputs
    x = model.stem(x)
    confs = []
    for i, (block, head) in enumerate(zip(model.blocks, model.heads)):
        x = block(x)
        conf = F.softmax(head(x), dim=1).max().item()
        confs.append(conf)
        if conf > model.exit_threshold:
            return i
    return ("best", int(np.argmax(confs)))


EXTRA_METHODS = {EARLY_EXIT: path_key_early_exit}


if __name__ == "__main__":
    model, example = make()
    for name, key_fn in [(METHOD, path_key), (EARLY_EXIT, path_key_early_exit)]:
        keys = common.path_keys(model, sample_inputs(200), key_fn, name)
        common.print_frequencies(keys, "paths", 16, prefix=f"{name}: ",
                                 sort_key=lambda kv: str(kv[0]))
