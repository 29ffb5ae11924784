"""Policy network that picks which residual blocks to run (BlockDrop-style).

A cheap policy head looks at a downsampled copy of the image and emits one
probability per residual block; ``action = (probs > 0.5).float()`` is the
block-drop decision at inference. The backbone then runs block ``i`` only if
``action[0, i] > 0.5``. Executed block indices are logged in the module attribute
``self.saved_actions`` (reset at the start of every forward). Returns the logits
and the action tensor.

Random weights; the policy biases are set in ``make()`` (from a fixed calibration
batch) so that each block is kept for about half of the random inputs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


class ResidualBranch(nn.Module):
    """The residual branch f(x) of a basic block; the skip connection lives in the caller."""

    def __init__(self, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class PolicyHead(nn.Module):
    def __init__(self, num_blocks, width=16, in_size=16):
        super().__init__()
        self.in_size = in_size
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.logit = nn.Linear(width * 4, num_blocks)

    def forward(self, x):
        x = F.interpolate(
            x, size=(self.in_size, self.in_size), mode="bilinear", align_corners=False
        )
        return self.logit(self.features(x))


class BlockDropNet(nn.Module):
    def __init__(self, num_blocks=8, planes=16, num_classes=10):
        super().__init__()
        self.policy = PolicyHead(num_blocks)
        self.stem = nn.Sequential(
            nn.Conv2d(3, planes, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.ModuleList([ResidualBranch(planes) for _ in range(num_blocks)])
        self.fc = nn.Linear(planes, num_classes)
        self.saved_actions = []

    def forward(self, x):
        self.saved_actions = []
        probs = torch.sigmoid(self.policy(x))
        action = (probs > 0.5).float()

        x = self.stem(x)
        for i, blk in enumerate(self.blocks):
            if action[0, i] > 0.5:
                x = x + blk(x)
                x = F.relu(x)
                self.saved_actions.append(i)
        x = F.adaptive_avg_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        logits = self.fc(x)
        return logits, action


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.image_inputs(n, seed)


@torch.no_grad()
def _calibrate(model: BlockDropNet, x: torch.Tensor) -> None:
    """Shift each policy logit so that its median over the calibration batch is 0."""
    z = model.policy(x)
    model.policy.logit.bias.sub_(z.median(0).values)


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(BlockDropNet, seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 256, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Tuple of per-block keep decisions read from the returned action tensor."""
    _, action = output
    return tuple(int(a) for a in action[0].tolist())


# Number of distinct block-drop patterns over sample_inputs(200) for make(0) (measured).
PATHS = 104


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    counts = common.print_frequencies(keys, "block-drop patterns", suffix=f" (of 2^{len(keys[0])})")
    common.print_block_usage(keys, "kept")
    print("most common patterns:", counts.most_common(3))
