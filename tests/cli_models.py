"""Tiny models for the CLI tests: TARGETs of every kind, good and bad."""

import torch
from torch import nn


class Gate(nn.Module):
    """A data-dependent branch: two paths, a few parameters; builds without arguments.
    The condition reads a float out of a tensor, so the branch stays in the host program
    on every backend and `--show-path` shows which arm ran."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum().item() > 0:
            return torch.relu(h), 1
        return self.b(h), 0


def make():
    torch.manual_seed(0)
    return Gate(), (torch.randn(1, 4),)


def make_module_only():
    torch.manual_seed(0)
    return Gate()


def needs_args(width):
    return Gate()


def not_a_model():
    return 42


def broken():
    raise RuntimeError("the factory itself failed")


class LoopElse(nn.Module):
    """`for ... else` over a tensor condition: the frontend refuses it (UnsupportedError)."""

    def forward(self, x):
        for i in range(3):
            if x.sum() > i:
                break
        else:
            x = x + 1
        return x


class Noisy(nn.Module):
    """Random noise on one path: the compiled model cannot match eager (MismatchError)."""

    def forward(self, x):
        if x.sum() > 0:
            return x + torch.randn_like(x)
        return x - 1


NOT_CALLABLE = 3
