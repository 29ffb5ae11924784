"""A block-dropping ResNet (BlockDrop style): a policy network picks the residual blocks.

Written the way block-dropping inference scripts write it: the policy network's
probabilities are thresholded by masked assignment (``policy[policy < 0.5] = 0.0``), and
``policy.data.squeeze(0)`` is handed to ``forward_single``, which runs block ``t`` only
``if policy[t] == 1``. ``make()`` builds the ResNet-110 CIFAR layout (3 stages x 18 basic
blocks = 54 gated blocks); ``make(blocks=2)`` a 6-block toy of it for tests.

Random weights; the policy's biases are set in ``make()`` from a calibration batch so that
every block runs for about half of the inputs. Not part of the zoo (``examples.zoo``):
used by ``tests/test_data_alias.py`` and ``benchmarks/blockdrop.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Downsample(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(
            cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class FlatResNet(nn.Module):
    """CIFAR ResNet whose blocks `forward_single` runs or skips by `policy`."""

    def __init__(self, layers=(18, 18, 18), widths=(16, 32, 64), num_classes=10):
        super().__init__()
        self.layer_config = list(layers)
        self.conv1, self.bn1 = conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0])
        self.ds, self.blocks = nn.ModuleList(), nn.ModuleList()
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            self.ds.append(nn.Sequential() if stride == 1 and cin == w else
                           Downsample(cin, w, stride))
            self.blocks.append(nn.ModuleList(
                [BasicBlock(cin if b == 0 else w, w, stride if b == 0 else 1)
                 for b in range(n)]))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward_single(self, x, policy):
        x = F.relu(self.bn1(self.conv1(x)))
        t = 0
        for segment, num_blocks in enumerate(self.layer_config):
            for b in range(num_blocks):
                residual = self.ds[segment](x) if b == 0 else x
                if policy[t] == 1:
                    x = residual + self.blocks[segment][b](x)
                    x = F.relu(x)
                else:
                    x = residual
                t += 1
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class PolicyNet(nn.Module):
    """A small CNN: one probability per block."""

    def __init__(self, num_blocks, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.logit = nn.Linear(width, num_blocks)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.sigmoid(self.logit(x))


class BlockDrop(nn.Module):
    def __init__(self, layers=(18, 18, 18), widths=(16, 32, 64)):
        super().__init__()
        self.agent = PolicyNet(sum(layers))
        self.rnet = FlatResNet(layers, widths)

    def forward(self, inputs):
        probs = self.agent(inputs)
        policy = probs.clone()
        policy[policy < 0.5] = 0.0
        policy[policy >= 0.5] = 1.0
        preds = self.rnet.forward_single(inputs, policy.data.squeeze(0))
        return preds, policy


def sample_inputs(n: int, seed: int = 0, size: int = 32) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    scales = (0.5, 1.0, 2.0)
    return [(torch.randn(1, 3, size, size, generator=g) * scales[i % 3],) for i in range(n)]


@torch.no_grad()
def make(blocks: int = 18, widths=(16, 32, 64), size: int = 32,
         seed: int = 0) -> tuple[nn.Module, tuple]:
    """(model in eval mode, example inputs); `blocks` per stage, 3 stages."""
    torch.manual_seed(seed)
    model = BlockDrop((blocks,) * 3, widths)
    for block in model.rnet.blocks.modules():
        if isinstance(block, BasicBlock):
            block.bn2.weight.mul_(0.2)  # keep 54 summed residuals in range
    batch = torch.cat([x for (x,) in sample_inputs(255, seed + 1000, size)])
    fc = model.agent.logit
    z = torch.logit(model.agent(batch).double()).float()
    fc.weight.mul_(2.0 / z.std(0)[:, None])  # logits of std 2: few near-ties at 0.5
    z = torch.logit(model.agent(batch).double()).float()
    fc.bias.sub_(z.median(0).values)  # each block on for about half of the inputs
    return model.eval(), sample_inputs(1, seed, size)[0]


def policy_key(output) -> tuple:
    """The blocks run, from the returned policy."""
    return tuple(int(v) for v in output[1][0].tolist())
