"""Small models for tests/test_raise.py (a module of its own: pytest rewrites the
`assert` statements of test files, which would change their messages)."""

import torch
from torch import nn


class Exit(Exception):
    """An early exit carrying the logits and the layer (a model's own exception class)."""

    def __init__(self, logits, layer):
        super().__init__(logits, layer)
        self.logits, self.layer = logits, layer


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(4)])
        self.heads = nn.ModuleList([nn.Linear(4, 2) for _ in range(4)])

    def forward(self, x):
        for i, (layer, head) in enumerate(zip(self.layers, self.heads)):
            x = torch.tanh(layer(x))
            logits = head(x)
            if torch.softmax(logits, -1).max() > 0.65:
                raise Exit(logits, i + 1)
        return x


class EarlyExit(nn.Module):
    """A 4-layer MLP encoder that raises `Exit` at a confident layer, caught here."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.classifier = nn.Linear(4, 2)

    def forward(self, x):
        layer = 5
        try:
            h = self.encoder(x)
            logits = self.classifier(h)
        except Exit as e:
            logits = e.logits
            layer = e.layer
        return logits, layer


class Checks(nn.Module):
    """A data-dependent assert, and a raise in a data-dependent branch."""

    def forward(self, x):
        if torch.isnan(x).any():
            raise ValueError("NaN in the input")
        assert x.abs().max() < 2.5, "input out of range"
        y = x * 2
        if y.sum() > 3:
            raise Exit(None, "too large")  # the model's own class, uncaught
        return y
