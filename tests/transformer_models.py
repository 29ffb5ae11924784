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


class SharedGroups(nn.Module):
    """ALBERT's loop: one shared layer, its head mask sliced by `int(i / k)` of the
    counter, a classifier per iteration, `break` when two heads agree."""

    def __init__(self, dim=8, n=4, classes=3):
        super().__init__()
        self.n = n
        self.shared = TinyLayer(dim)
        self.heads = nn.ModuleList([nn.Linear(dim, classes) for _ in range(n)])

    def forward(self, x):
        head_mask = [None] * self.n
        h, result = x, None
        for i in range(self.n):
            group = int(i / (self.n / 1))
            masks = head_mask[group * self.n:(group + 1) * self.n]
            h = self.shared(h, masks[i])
            logits = self.heads[i](h)
            if result is not None and torch.all(logits.argmax(1).eq(result.argmax(1))):
                result = logits
                break
            result = logits
        return result


class Recurrent(nn.Module):
    """A range loop with a data-dependent `break` whose body uses the same weights each
    time: it stays one host loop (not unrolled)."""

    def __init__(self, dim=8):
        super().__init__()
        self.cell = nn.Linear(dim, dim)

    def forward(self, x):
        h = x
        for _ in range(20):
            h = torch.tanh(self.cell(h))
            if h.sum() > 0:
                break
        return h


def batch_index_select(x, idx):
    """DynamicViT's gather of kept tokens, batch by batch."""
    B, N, C = x.size()
    offset = torch.arange(B, dtype=torch.long, device=x.device).view(B, 1) * N
    return x.reshape(B * N, C)[(idx + offset).reshape(-1)].reshape(B, idx.size(1), C)


class TokenPruning(nn.Module):
    """DynamicViT's eval pruning: keep the `argsort(score)[:, :k]` best tokens."""

    def __init__(self, dim=8, ratios=(0.5, 0.25)):
        super().__init__()
        self.ratios = ratios
        self.score = nn.ModuleList([nn.Linear(dim, 1) for _ in ratios])
        self.blocks = nn.ModuleList([TinyLayer(dim) for _ in ratios])

    def forward(self, x):
        n = x.shape[1] - 1
        for p, blk in enumerate(self.blocks):
            score = self.score[p](x[:, 1:])[:, :, 0]
            keep = torch.argsort(score, dim=1, descending=True)[:, :int(n * self.ratios[p])]
            cls = torch.zeros(x.shape[0], 1, dtype=keep.dtype)
            x = blk(batch_index_select(x, torch.cat([cls, keep + 1], dim=1)))
        return x.mean(1)
