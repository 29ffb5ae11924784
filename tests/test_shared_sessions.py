"""Sub-networks sharing weights in memory, sessions created on first call, at most N
alive (issue #26: SN-Net's 71 stitch ids on one machine)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dycomp
from dycomp.runtime.shared_weights import WeightStore

WIDTHS = [0.25, 0.5, 1.0]


class SlimStitch(nn.Module):
    """Slimmable (`width` slices every weight) and stitchable (`set_stitch(k)`: the head
    of one of two anchors), with a data-dependent branch (an ONNX `If` whose body holds
    weights) in every sub-network."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 64)
        self.heads = nn.ModuleList([nn.Linear(64, 8), nn.Linear(64, 8)])
        self.stitch = 0

    def set_stitch(self, k):
        self.stitch = k

    def forward(self, x, width=1.0):
        c = int(64 * width)
        h = F.relu(F.linear(x, self.fc1.weight[:c], self.fc1.bias[:c]))
        if h.mean() > 0.3:
            h = F.relu(F.linear(h, self.fc2.weight[:c, :c], self.fc2.bias[:c]))
        head = self.heads[self.stitch]
        return F.linear(h, head.weight[:, :c], head.bias)


SELECTORS = {"width": WIDTHS, "stitch": [("set_stitch", (0,)), ("set_stitch", (1,))]}


def _net():
    torch.manual_seed(0)
    return SlimStitch().eval()


def _inputs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    # scales 0.2..3: both sides of the branch
    return [torch.randn(1, 16, generator=g) * (0.2 + 0.6 * i) for i in range(n)]


def _eager(net, x, width, stitch):
    net.set_stitch(stitch)
    with torch.no_grad():
        return net(x, width=width)


def _calls():
    """Every (width, stitch), alternating so that a small cap evicts on every call."""
    return [(w, s) for _ in range(2) for s in (0, 1) for w in WIDTHS]


def _compiled(cap):
    net = _net()
    cm = dycomp.compile(net, (torch.randn(1, 16),), example_kwargs={"width": 1.0},
                        backend="onnx", selectors=SELECTORS, max_live_subnets=cap)
    return net, cm


@pytest.fixture(scope="module")
def compiled_cap1():
    return _compiled(1)


def _key(width, stitch):
    return (WIDTHS.index(width), stitch)


def _branch(net, x, width):
    """Whether eager takes the branch for `x` at `width`."""
    c = int(64 * width)
    with torch.no_grad():
        return bool(F.relu(F.linear(x, net.fc1.weight[:c], net.fc1.bias[:c])).mean() > 0.3)


def _check_alternating(net, m, cap, numpy=False):
    """Every sub-network matches eager, called in turn; never more than `cap` live."""
    inputs = _inputs()
    took = {False: 0, True: 0}
    for width, stitch in _calls():
        m.set_stitch(stitch)
        for x in inputs:
            out = m(x.numpy() if numpy else x, width=width)
            want = _eager(net, x, width, stitch).numpy()
            np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-4)
            took[_branch(net, x, width)] += 1
        live = m.live()
        assert _key(width, stitch) in live
        assert len(live) <= cap, live
    assert all(took.values())


def test_not_called_has_no_session(compiled_cap1):
    net, cm = compiled_cap1
    assert len(cm.subnets) == 6
    assert cm.live() == []  # compiled and checked, but no session kept
    cm.set_stitch(1)
    x = _inputs(1)[0]
    np.testing.assert_allclose(cm(x, width=0.5).numpy(), _eager(net, x, 0.5, 1).numpy(),
                               rtol=1e-4, atol=1e-4)
    assert cm.live() == [(1, 1)]


@pytest.mark.parametrize("cap", [1, 2])
def test_eviction_and_recreation_match_eager(cap):
    net, cm = _compiled(cap)
    assert cm.max_live_subnets == cap
    _check_alternating(net, cm, cap)


def test_cap_one_releases_the_previous(compiled_cap1):
    net, cm = compiled_cap1
    cm.set_stitch(0)
    x = _inputs(1)[0]
    cm(x, width=0.25)
    first = cm.subnets[(0, 0)].executor
    assert cm.live() == [(0, 0)] and first.live
    cm(x, width=1.0)
    assert cm.live() == [(2, 0)] and not first.live and not first.sessions
    np.testing.assert_allclose(cm(x, width=0.25).numpy(), _eager(net, x, 0.25, 0).numpy(),
                               rtol=1e-4, atol=1e-4)  # created again
    assert cm.live() == [(0, 0)]


def test_store_holds_each_distinct_tensor_once(compiled_cap1):
    net, cm = compiled_cap1
    store = cm.weights
    assert isinstance(store, WeightStore)
    params = {n: p.detach().numpy() for n, p in net.named_parameters()}
    large = {n: a for n, a in params.items() if a.nbytes >= 256}
    # every weight at least 256 bytes, whole (the widest sub-networks use them whole; the
    # narrower ones' slices are blocks of them), in its own or transposed layout
    stored = store.stored()
    assert len(stored) == len(large), [a.shape for a in stored]
    for a in stored:
        assert sum(np.array_equal(a, p) or np.array_equal(a, p.T) for p in large.values()) == 1
    assert store.nbytes == sum(-(-a.nbytes // 64) * 64 for a in stored[:-1]) + stored[-1].nbytes
    assert store.nbytes <= sum(a.nbytes for a in large.values()) + 64 * len(large)
    assert store.references > 3 * len(large)  # shared by the 6 sub-networks


def test_saved_artifact_loads_lazily_under_the_cap(compiled_cap1, tmp_path):
    net, cm = compiled_cap1
    path = cm.save(tmp_path / "slim.dyc")
    rt = dycomp.runtime.load(path, max_live_subnets=1)
    assert rt.live() == []
    _check_alternating(net, rt, 1, numpy=True)
    loaded = dycomp.load(path, max_live_subnets=2)
    assert loaded.live() == []
    _check_alternating(net, loaded, 2)
    # a sub-network saved on its own carries its weights (no weights.bin beside it)
    own = cm.subnets[(2, 1)].save(tmp_path / "own.dyc")
    one = dycomp.runtime.load(own)
    x = _inputs(1)[0]
    np.testing.assert_allclose(one(x.numpy()), _eager(net, x, 1.0, 1).numpy(), rtol=1e-4,
                               atol=1e-4)


def test_a_bad_cap_is_refused():
    with pytest.raises(ValueError, match="max_live_subnets"):
        dycomp.compile(_net(), (torch.randn(1, 16),), backend="onnx",
                       selectors={"width": WIDTHS}, max_live_subnets=0)


class SlimConv(nn.Module):
    """Convolutions and a data-dependent exit: ONNX Runtime's NCHWc layout across `If`
    branches (`blocked_across_branches`) is rewritten for shared sessions too."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x, width=1.0):
        c1, c2 = int(16 * width), int(32 * width)
        h = F.relu(F.conv2d(x, self.conv1.weight[:c1], self.conv1.bias[:c1], padding=1))
        if h.mean() > 0.2:
            h = F.relu(F.conv2d(h, self.conv2.weight[:c2, :c1], self.conv2.bias[:c2],
                                padding=1))
        else:
            h = F.relu(F.conv2d(h, self.conv2.weight[:c2, :c1], None, padding=1)) * 2
        return F.linear(h.mean((2, 3)), self.fc.weight[:, :c2], self.fc.bias)


def test_conv_branches_keep_the_blocked_layout(caplog):
    torch.manual_seed(0)
    net = SlimConv().eval()
    cm = dycomp.compile(net, (torch.randn(1, 3, 8, 8),), backend="onnx",
                        selectors={"width": [0.5, 1.0]}, max_live_subnets=1)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(1, 3, 8, 8, generator=g) * s for s in (0.1, 3.0)]
    with caplog.at_level("WARNING"):
        for _ in range(2):
            for w in (0.5, 1.0):
                for x in xs:
                    with torch.no_grad():
                        want = net(x, width=w).numpy()
                    np.testing.assert_allclose(cm(x, width=w).numpy(), want, rtol=1e-4,
                                               atol=1e-4)
    assert "NCHWc" not in caplog.text
