"""A purely static small ResNet (CIFAR-style, 3 stages x 2 basic blocks).

No data-dependent control flow at all, but plenty of *static* Python that the
frontend must resolve at compile time: loops over an ``nn.ModuleList`` of
``nn.Sequential`` stages, ``getattr(self, f"layer{i}")``, ``is not None`` checks on
optional submodules, config attributes (``self.use_dropout``, ``self.num_stages``),
``self.training``, in-place ops (``out += identity``, ``nn.ReLU(inplace=True)``)
and a reshape driven by ``x.size(0)``. It must compile to exactly one region.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class StaticResNet(nn.Module):
    def __init__(self, depths=(2, 2, 2), widths=(16, 32, 64), num_classes=10, use_dropout=False):
        super().__init__()
        self.num_stages = len(depths)
        self.use_dropout = use_dropout
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        for i, (depth, planes) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(depth - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            layer = getattr(self, f"layer{i + 1}")
            for block in layer:
                x = block(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        if self.use_dropout:
            x = F.dropout(x, p=0.2, training=self.training)
        return self.fc(x)


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.image_inputs(n, seed)


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(StaticResNet, seed)
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """Static network: a single path."""
    return 0


PATHS = {0}


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    common.print_frequencies(keys, "paths", 4)
