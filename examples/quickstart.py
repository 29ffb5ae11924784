"""Quickstart: compile a multi-exit network as written and run it.

Run: python examples/quickstart.py
"""

import torch
import torch.nn.functional as F
from torch import nn

import dycomp


class MultiExit(nn.Module):
    """Returns at the first head whose confidence passes the threshold."""

    def __init__(self, threshold=0.5):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3))
        self.heads = nn.ModuleList(nn.Linear(16, 4) for _ in range(3))
        self.threshold = threshold

    def forward(self, x):
        for i, (block, head) in enumerate(zip(self.blocks, self.heads)):
            x = block(x)
            logits = head(x)
            if F.softmax(logits, -1).max() >= self.threshold:
                return logits, i, True
        return logits, i, False


def main():
    model = MultiExit().eval()
    x = torch.randn(1, 16)
    cm = dycomp.compile(model, (x,))  # checks itself against eager on generated inputs
    print(cm.explain())
    for scale in (0.1, 1.0, 10.0):
        out, path = cm.run(x * scale, return_path=True)
        logits, exit_id, early = out
        print(f"scale {scale:>4}: exit {exit_id} early={early} path={' -> '.join(path)}")


if __name__ == "__main__":
    main()
