"""Ops whose output size depends on values (`y[mask]`, `nonzero`, `masked_select`,
`unique`, `index_select` by their results): the size varies between calls, and every shape
read from it (`y.size(0)`, `len(y)`, `y.shape[0]`, `numel()`) is computed at run time.
Compared with eager PyTorch on inputs giving several sizes (0 rows included), backends
torch and onnx."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import assert_matches_eager

BACKENDS = ["torch", "onnx"]


class MaskRows(nn.Module):
    """Rows kept by a mask, an LSTMCell on that varying batch, nonzero / index_select,
    masked_select, unique; sizes read back, used in shapes and in a decision."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.cell = nn.LSTMCell(4, 5)

    def forward(self, x):
        y = self.fc(x)
        y = y[y.mean(1) > 0]
        h, c = self.cell(y)
        idx = torch.nonzero(x[:, 0] > 0).squeeze(1)
        z = x.index_select(0, idx) * 2
        sel = torch.masked_select(x, x > 1)
        u = torch.unique((x * 2).round())
        flat = h.reshape(h.size(0), 5) + torch.zeros(len(y), 1)
        tot = h.sum() + c.sum()
        if y.size(0) > 2:
            tot = tot + 1
        return flat, c, z, sel, u, tot, y.shape[0], len(z), sel.numel(), u.size(0)


class ShrinkLoop(nn.Module):
    """A host loop that filters rows until few remain: the loop-carried value's size
    comes from a mask each iteration."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        y = self.fc(x)
        steps = 0
        while y.size(0) > 2:
            y = y[y[:, 0] > y[:, 0].mean()]
            steps += 1
        return y * 2, y.size(0), steps


def _inputs(n, rows, cols, shifts, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, cols, generator=g) + shifts[i % len(shifts)] for i in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_rows_sizes_read_at_run_time(backend):
    torch.manual_seed(0)
    m = MaskRows().eval()
    xs = _inputs(10, 6, 4, [0, -3, 3, 0.3, -0.4, 0.5], seed=1)
    with torch.no_grad():
        sizes = {m(x)[6] for x in xs}
    assert 0 in sizes and len(sizes) >= 4  # several row counts, an empty mask among them
    assert_matches_eager(m, xs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_shrinking_by_mask(backend):
    torch.manual_seed(0)
    m = ShrinkLoop().eval()
    xs = _inputs(8, 12, 3, [0.0], seed=2)
    with torch.no_grad():
        outs = {m(x)[1:] for x in xs}
    assert len({o[0] for o in outs}) >= 2 and len({o[1] for o in outs}) >= 2
    assert_matches_eager(m, xs, backend=backend)
