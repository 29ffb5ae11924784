"""Constructs of real research code (issue #21's corpus): modules returning nested
structures, lists of tensors, non-dividing adaptive pooling, LSTM cells, grad-mode
decorators, lambdas as attributes, slice bounds read from tensors.
Each model is compared with eager PyTorch on every path, backends torch and onnx."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import assert_matches_eager, randn_inputs

BACKENDS = ["torch", "onnx"]


class LstmController(nn.Module):
    """An RNN controller (nn.LSTM, `out, (h, c)`) choosing which block runs next."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.cell = nn.LSTMCell(8, 8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h, c = torch.zeros(1, 1, 8), torch.zeros(1, 1, 8)
        hc = (torch.zeros(1, 8), torch.zeros(1, 8))
        chosen = []
        for _ in range(3):
            out, (h, c) = self.lstm(x.unsqueeze(1), (h, c))
            hc = self.cell(out[:, -1], hc)
            k = int(self.head(hc[0] + x).argmax().item())
            chosen.append(k)
            x = torch.tanh(self.blocks[k](x))
        return x, h, c, hc[1], chosen


class FeatureLists(nn.Module):
    """Multi-scale feature lists passed between methods and indexed (`fs[i - 1], fs[i]`),
    and a list of tensors appended in a data-dependent loop, then `cat` / `stack`."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])

    def pyramid(self, x):
        feats = [x]
        for conv in self.convs:
            feats.append(conv(nn.functional.avg_pool2d(feats[-1], 2)))
        return feats

    def fuse(self, feats):
        return [feats[i] + nn.functional.interpolate(feats[i - 1], size=feats[i].shape[-2:])
                for i in range(1, len(feats))]

    def forward(self, x):
        fs = self.fuse(self.pyramid(x))
        words = []
        i = 0
        while i < 3 and fs[i].mean() + 0.12 * i > 0:
            words.append(fs[i].mean((2, 3)))
            i += 1
        if i == 0:
            return fs[-1].flatten(1), i
        return torch.cat(words, 1) + torch.stack(words).sum(0).repeat(1, len(words)), i


class PoolCell(nn.Module):
    """AdaptiveAvgPool2d to 3x3 of a 7x7 map (no divisor), AdaptiveAvgPool1d 5 -> 3, and
    an LSTMCell (batch 4) in each arm of a branch."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.pool1 = nn.AdaptiveAvgPool1d(3)
        self.cell = nn.LSTMCell(36 + 12, 6)

    def forward(self, x):
        y = torch.cat([self.pool(x).flatten(1), self.pool1(x[:, :, 0, :5]).flatten(1)], 1)
        if y.sum() > 0:
            h, c = self.cell(y * 2)
            return h + c, 1
        h, c = self.cell(y)
        return h - c, 0


class Decorated(nn.Module):
    """`@torch.no_grad()` on the entry and on a submodule method; lambdas as attributes,
    one with a data-dependent conditional expression."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = lambda x: x * 2
        self.gate = lambda x: self.fc(x) if x.sum() > 0 else -x

    @torch.no_grad()
    def sub(self, x):
        if x.mean() > 0.2:
            return self.fc(x), 1
        return -x, 0

    @torch.no_grad()
    def forward(self, x):
        y, a = self.sub(x)
        y = self.act(self.gate(y))
        if y.mean() > 0:
            return y + 1, a, 1
        return y, a, 0


class Patch(nn.Module):
    """GFNet's crop: slice bounds read from tensors with `.item()`."""

    def __init__(self, p=4):
        super().__init__()
        self.p = p
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        t = torch.floor(torch.sigmoid(self.fc(x[:, 0, 0, :2])) * (x.size(-1) - self.p)).int()
        a, b = int(t[0, 0].item()), int(t[0, 1].item())
        patch = x[0, :, a:a + self.p, (t[0, 1] + 0).item():(t[0, 1] + self.p).item()]
        row = x[0, 0, b]
        return patch * 2, row, (a, b)


def _tags(fn, inputs, tag):
    with torch.no_grad():
        return {tag(fn(*(i if isinstance(i, tuple) else (i,)))) for i in inputs}


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_controller(backend):
    torch.manual_seed(0)
    m = LstmController().eval()
    xs = randn_inputs((1, 8), 12, seed=1)
    assert len(_tags(m, xs, lambda o: tuple(o[-1]))) >= 4
    assert len(_tags(m, xs, lambda o: o[-1][0])) == 3  # each block chosen first somewhere
    assert_matches_eager(m, xs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_feature_lists(backend):
    torch.manual_seed(0)
    m = FeatureLists().eval()
    xs = [x + s for x, s in zip(randn_inputs((1, 4, 16, 16), 12, seed=2),
                                [-1, 0.3, 0.1, 0.5] * 3)]
    tags = _tags(m, xs, lambda o: o[1])
    assert 0 in tags and len(tags) >= 3
    assert_matches_eager(m, xs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_and_cell(backend):
    torch.manual_seed(0)
    m = PoolCell().eval()
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(4, 4, 7, 7, generator=g) + torch.randn(4, 1, 1, 1, generator=g)
          for _ in range(8)]
    assert _tags(m, xs, lambda o: o[1]) == {0, 1}
    assert_matches_eager(m, xs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_mode_decorators_and_lambdas(backend):
    torch.manual_seed(0)
    m = Decorated().eval()
    xs = randn_inputs((1, 4), 16, seed=4)
    assert len(_tags(m, xs, lambda o: o[1:])) >= 3
    assert_matches_eager(m, xs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_slice_bounds_from_item(backend):
    torch.manual_seed(0)
    m = Patch().eval()
    xs = randn_inputs((1, 3, 12, 12), 12, seed=5)
    assert len(_tags(m, xs, lambda o: o[2])) >= 6
    assert_matches_eager(m, xs, backend=backend)


def test_slice_of_another_length_raises():
    """The region cuts a fixed length: a data-dependent slice whose length changes on
    another input raises instead of cutting the wrong rows."""
    import dycomp

    class Cut(nn.Module):
        def forward(self, x):
            n = int(x[0, 0].item())
            return x[:, :n] * 2

    x = torch.tensor([[3.0, 1, 2, 5, 6]])
    cm = dycomp.compile(Cut(), (x,), check=False)
    assert torch.equal(cm(x), x[:, :3] * 2)
    with pytest.raises(Exception, match="compiled for slices of 3"):
        cm(torch.tensor([[2.0, 1, 2, 5, 6]]))
