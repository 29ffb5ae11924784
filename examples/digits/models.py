"""Two dynamic CNNs for 1x16x16 digits, written as plain research-style PyTorch.

``MultiExitCNN`` (BranchyNet-style early exiting): ``forward`` returns from inside the
loop over its blocks as soon as a head's softmax confidence reaches ``self.threshold``.
``GatedCNN`` (SkipNet-style): every residual block has a tiny gate, and in eval mode
``if g > 0.5: x = x + block(x)`` is a real Python ``if`` on a tensor.

Both ``forward`` methods run at batch 1 in eval mode (the decisions are per input).
Training and batched evaluation use ``forward_all`` / ``forward_masked``, which compute
the same function for a whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
MULTI_EXIT_WIDTHS = (32, 64, 64, 64)  # one block and one exit per entry


def conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias) followed by BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (or a strided 1x1 projection), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn(c_in, c_out, stride, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class Head(nn.Module):
    """Global average pool + linear classifier."""

    def __init__(self, channels: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- multi-exit


class MultiExitCNN(nn.Module):
    """A residual CNN with a classifier head after every block; leaves at the first
    head whose softmax confidence reaches ``threshold`` (the last head always answers).

    ``forward(x)`` returns ``(logits, exit_index)`` with ``exit_index`` a Python int.
    """

    def __init__(self, widths=MULTI_EXIT_WIDTHS, strides=(1, 2, 1, 2), threshold: float = 0.9):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, widths[0]), nn.ReLU())
        blocks, heads = [], []
        c_in = widths[0]
        for c_out, stride in zip(widths, strides):
            blocks.append(ResBlock(c_in, c_out, stride))
            heads.append(Head(c_out))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        self.threshold = threshold

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        for i, (block, head) in enumerate(zip(self.blocks, self.heads)):
            x = block(x)
            logits = head(x)
            conf = F.softmax(logits, dim=-1)
            if conf.max() >= self.threshold:
                return logits, i
        return logits, len(self.blocks) - 1

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every head, for a whole batch (training, batched evaluation)."""
        x = self.stem(x)
        outputs = []
        for block, head in zip(self.blocks, self.heads):
            x = block(x)
            outputs.append(head(x))
        return outputs


def exit_indices(model: MultiExitCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched early exit: ``(logits, exit)`` per input, as ``forward`` would answer."""
    with torch.no_grad():
        all_logits = torch.stack(model.forward_all(x))  # (exits, N, classes)
    confident = F.softmax(all_logits, dim=-1).amax(-1) >= model.threshold
    confident[-1] = True
    exits = confident.float().argmax(0)  # first confident head
    return all_logits[exits, torch.arange(x.shape[0])], exits


def exit_index(model: MultiExitCNN, x: torch.Tensor) -> int:
    """The exit eager PyTorch takes for one input ``x`` of shape (1, 1, H, W)."""
    with torch.no_grad():
        for i, logits in enumerate(model.forward_all(x)):
            if F.softmax(logits, dim=-1).max() >= model.threshold:
                return i
    return len(model.blocks) - 1


# ----------------------------------------------------------------------------- gated


class Gate(nn.Module):
    """Global average pool + linear -> sigmoid: the probability of running a block."""

    def __init__(self, channels: int, bias: float = 2.0):
        super().__init__()
        self.fc = nn.Linear(channels, 1)
        nn.init.zeros_(self.fc.weight)
        nn.init.constant_(self.fc.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


class GatedCNN(nn.Module):
    """A residual CNN whose blocks each run only if their gate says so (SkipNet-style).

    Two stages of ``blocks_per_stage`` gated blocks (conv-BN-ReLU-conv-BN added to the
    input); a strided conv between stages. ``forward(x)`` returns ``(logits, gates)``:
    ``gates`` is the (1, n_blocks) tensor of gate probabilities; block ``i`` ran iff
    ``gates[0, i] > 0.5``.
    """

    def __init__(self, widths=(32, 64), blocks_per_stage: int = 2):
        assert len(widths) == 2, "two stages"
        super().__init__()
        self.stem = nn.Sequential(conv_bn(1, widths[0]), nn.ReLU())
        self.down = nn.Sequential(conv_bn(widths[0], widths[1], stride=2), nn.ReLU())
        self.down_at = blocks_per_stage  # index of the first block of the second stage
        self.gates = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for width in widths:
            for _ in range(blocks_per_stage):
                self.gates.append(Gate(width))
                self.blocks.append(nn.Sequential(conv_bn(width, width), nn.ReLU(),
                                                 conv_bn(width, width)))
        self.head = nn.Sequential(nn.ReLU(), Head(widths[-1]))

    def forward(self, x: torch.Tensor):
        x = self.stem(x)
        probs = []
        for i, (gate, block) in enumerate(zip(self.gates, self.blocks)):
            if i == self.down_at:
                x = self.down(x)
            g = gate(x)
            probs.append(g)
            if g > 0.5:
                x = x + block(x)
        return self.head(x), torch.cat(probs, dim=1)

    def forward_masked(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for a whole batch, gating each input separately.

        Every block runs on the whole batch and is masked by the hard gate. In training
        mode the mask carries a straight-through gradient to the gate probability; in eval
        mode the result equals ``forward`` input by input.
        """
        x = self.stem(x)
        probs = []
        for i, (gate, block) in enumerate(zip(self.gates, self.blocks)):
            if i == self.down_at:
                x = self.down(x)
            g = gate(x)
            probs.append(g)
            hard = (g > 0.5).float()
            mask = hard + g - g.detach() if self.training else hard
            x = x + mask.view(-1, 1, 1, 1) * block(x)
        return self.head(x), torch.cat(probs, dim=1)


def gate_pattern(model: GatedCNN, x: torch.Tensor) -> tuple[int, ...]:
    """Which blocks eager PyTorch runs for one input ``x`` of shape (1, 1, H, W)."""
    with torch.no_grad():
        _, probs = model(x)
    return tuple(int(p > 0.5) for p in probs[0])


def gate_patterns(model: GatedCNN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``(logits, on)``: ``on[n, i]`` is True iff block i runs for input n."""
    with torch.no_grad():
        logits, probs = model.forward_masked(x)
    return logits, probs > 0.5


MODELS = {"multi_exit": MultiExitCNN, "gated": GatedCNN}
