"""Thread plan of matrix-vector regions (dycomp/backends/onnx_threads.py): large weights
used on a row or two get one intra-op thread; the same weights on many rows keep two."""

import torch
from torch import nn

import dycomp
from dycomp.backends.onnx_threads import MATVEC_MACS, example_shapes, largest_product
from tests.helpers import assert_matches_eager


class Experts(nn.Module):
    """Two wide experts (1 M weights: heavy by the weights rule) chosen by the input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gate = nn.Linear(512, 2)
        self.experts = nn.ModuleList(nn.Linear(512, 1024) for _ in range(2))

    def forward(self, x):
        if self.gate(x).sum() > 0:
            return self.experts[0](x)
        return self.experts[1](x) * 2


def _inputs(rows: int, n: int = 8) -> list:
    g = torch.Generator().manual_seed(rows)
    return [(torch.randn(rows, 512, generator=g),) for _ in range(n)]


def test_matvec_region_runs_on_one_thread():
    cm, paths = assert_matches_eager(Experts().eval(), _inputs(1), backend="onnx", threads=2,
                                     fuse_branches=False)
    assert len(set(paths)) == 2  # both experts ran
    assert set(cm.program.executor.threads.values()) == {1}


def test_many_rows_keep_the_threads():
    cm, _ = assert_matches_eager(Experts().eval(), _inputs(64), backend="onnx", threads=2,
                                 fuse_branches=False)
    heavy = [n for n, r in cm.graph.regions.items() if sum(
        t.dims[0] * t.dims[1] for t in r.onnx.graph.initializer if len(t.dims) == 2) > 1 << 18]
    assert heavy and {cm.program.executor.threads[n] for n in heavy} == {2}


def test_largest_product_counts_macs_at_the_example():
    x = torch.randn(3, 512)
    cm = dycomp.compile(Experts().eval(), (x,), backend="onnx", fuse_branches=False,
                        check=False)
    sizes = {n: largest_product(r.onnx, example_shapes(r)) for n, r in cm.graph.regions.items()}
    assert 3 * 512 * 1024 in sizes.values()  # an expert: (3 x 512) @ (512 x 1024)
    assert all(s is None or s < MATVEC_MACS for s in sizes.values())
