"""Small models of the constructs met in the corpus transformers (PABEE, DynamicViT,
A-ViT, nn.TransformerEncoder), for tests/test_transformer_constructs.py."""

from __future__ import annotations

import torch
from torch import nn


class TinyLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, h, head_mask=None):
        h = torch.relu(self.fc(h)) + h
        if head_mask is not None:
            h = h * head_mask
        return h


class TinyEncoder(nn.Module):
    def __init__(self, dim, n):
        super().__init__()
        self.layer = nn.ModuleList([TinyLayer(dim) for _ in range(n)])

    def adaptive_forward(self, h, current_layer, head_mask=None):
        return self.layer[current_layer](h, head_mask[current_layer])


class Patience(nn.Module):
    """PABEE's loop: internal classifiers vote, `break` after `patience` agreeing layers;
    `head_mask = [None] * n` indexed by the layer counter; a counter kept on the module."""

    def __init__(self, dim=8, n=4, classes=3, patience=1):
        super().__init__()
        self.n, self.patience = n, patience
        self.encoder = TinyEncoder(dim, n)
        self.heads = nn.ModuleList([nn.Linear(dim, classes) for _ in range(n)])
        self.layers_run = 0

    def forward(self, x, head_mask=None):
        if head_mask is None:
            head_mask = [None] * self.n
        h, counter, result, ran = x, 0, None, 0
        for i in range(self.n):
            ran += 1
            h = self.encoder.adaptive_forward(h, current_layer=i, head_mask=head_mask)
            logits = self.heads[i](h)
            labels = logits.detach().argmax(dim=1)
            if result is not None:
                previous = result.detach().argmax(dim=1)
            if (result is not None) and torch.all(labels.eq(previous)):
                counter += 1
            else:
                counter = 0
            result = logits
            if counter == self.patience:
                break
        self.layers_run += ran
        return result


class GatedEncoder(nn.Module):
    """An nn.TransformerEncoder (PyTorch's fused fast path in eval) run twice or once,
    by a data-dependent test on its output."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=32, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        h = self.encoder(x)
        if h[0, 0, 0] > 0:
            h = self.encoder(h)
        return self.head(h[:, 0])
