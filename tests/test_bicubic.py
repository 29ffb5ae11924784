"""Bicubic interpolation runs as weighted gathers on ONNX Runtime (dycomp/backends/
onnx_resize.py): same outputs as eager on every path, NaN and inf where eager puts them,
and no cubic `Resize` left in the exported subgraphs."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dycomp
from dycomp.check import compare


class Glance(nn.Module):
    """GFNet's pattern: a downsampled glance decides whether to look closer (a patch
    upsampled by an `nn.Upsample`)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)

    def forward(self, x):
        prime = F.interpolate(x, size=[12, 10], mode="bicubic", align_corners=True)
        y = self.conv(prime)
        if y.mean() > 0:
            return self.up(y[:, :, 2:8, 2:8]) * 2
        return y


def _ops(cm) -> set:
    models = cm.program.executor.models.values()
    return {n.op_type for m in models for n in onnx.load_from_string(m).graph.node}


@pytest.mark.parametrize("fuse", [False, True])
def test_bicubic_matches_eager_on_every_path_without_cubic_resize(fuse):
    torch.manual_seed(0)
    model = Glance().eval()
    cm = dycomp.compile(model, torch.randn(1, 3, 30, 24), backend="onnx",
                        fuse_branches=fuse)
    assert "Resize" not in _ops(cm)
    paths = set()
    g = torch.Generator().manual_seed(1)
    for i in range(30):
        x = torch.randn(1, 3, 30, 24, generator=g) + (i % 3 - 1)
        out, path = cm.run(x, return_path=True)
        paths.add(tuple(path))
        assert compare(model(x), out) is None, i
    assert len(paths) == 2 or fuse  # both arms taken (one fused subgraph: one path)
    x = torch.randn(1, 3, 30, 24, generator=g)
    x[0, 0, 7, 5], x[0, 1, 0, 0], x[0, 2, 29, 23] = float("inf"), float("nan"), -float("inf")
    expected, got = model(x), cm(x)
    assert torch.equal(torch.isnan(expected), torch.isnan(got))
    assert torch.equal(torch.isinf(expected), torch.isinf(got))


def test_bicubic_on_a_dynamic_spatial_dim_keeps_resize():
    """A spatial size that varies at run time has no constant taps: `Resize` stays."""
    model = Glance().eval()
    cm = dycomp.compile(model, torch.randn(1, 3, 30, 24), backend="onnx",
                        dynamic_dims={"x": {2: "h"}}, check=False)
    assert "Resize" in _ops(cm)
    for h in (20, 30, 41):
        x = torch.randn(1, 3, h, 24)
        assert compare(model(x), cm(x)) is None
