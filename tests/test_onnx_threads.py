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


# -- spinning: long-running subgraphs' workers spin briefly between parallel sections ---------
class Wide(nn.Module):
    """One 2048 x 2048 layer: LONG_RUN_WEIGHTS weights, a long run."""

    def __init__(self, width: int):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(width, width, bias=False)

    def forward(self, x):
        h = self.fc(x)
        if h.sum() > 0:
            return torch.relu(h)
        return h * 0.5


def _spinning(cm) -> set:
    def entry(session):
        try:
            return session.get_session_options().get_session_config_entry(
                "session.intra_op.spin_duration_us")
        except Exception:  # not set: ONNX Runtime's default (spinning)
            return "default"

    return {entry(s) for s in cm.program.executor.sessions.values()}


def test_long_running_subgraph_does_not_spin(monkeypatch):
    """With DYCOMP_SPIN_US set (off by default: unbounded spinning is faster when idle)."""
    from dycomp.runtime import onnx_executor
    from dycomp.runtime.onnx_executor import LONG_RUN_WEIGHTS

    SHORT_SPIN_US = 20
    monkeypatch.setattr(onnx_executor, "SHORT_SPIN_US", SHORT_SPIN_US)
    assert 2048 * 2048 == LONG_RUN_WEIGHTS
    g = torch.Generator().manual_seed(3)
    xs = [(torch.randn(64, 2048, generator=g),) for _ in range(6)]
    cm, paths = assert_matches_eager(Wide(2048).eval(), xs, backend="onnx", threads=2)
    assert len(set(paths)) == 2 and _spinning(cm) == {str(SHORT_SPIN_US)}
    small = [(x[:, :1024],) for (x,) in xs]
    cm, _ = assert_matches_eager(Wide(1024).eval(), small, backend="onnx", threads=2)
    assert set(cm.program.executor.threads.values()) == {2} and _spinning(cm) == {"default"}
