"""Selectors: one compiled model, many sub-networks chosen at call time (issue #26)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dycomp
from dycomp.errors import UnsupportedError
from dycomp.runtime.shared_weights import WEIGHTS

WIDTHS = [0.25, 0.5, 1.0]


class SlimCNN(nn.Module):
    """A slimmable CNN: `width` keeps the first channels of every conv (weights sliced
    in forward), and an early exit on the pooled features' scale."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)
        self.head = nn.Linear(32, 10)

    def forward(self, x, width=1.0):
        c1, c2 = int(16 * width), int(32 * width)
        h = F.relu(F.conv2d(x, self.conv1.weight[:c1], self.conv1.bias[:c1], padding=1))
        h = F.relu(F.conv2d(h, self.conv2.weight[:c2, :c1], self.conv2.bias[:c2], padding=1))
        h = h.mean((2, 3))
        if h.abs().mean() > 0.1:  # a data-dependent exit in every sub-network
            return F.linear(h, self.head.weight[:, :c2], self.head.bias), 1
        return F.linear(h, self.fc.weight[:, :c2], self.fc.bias), 0


class DepthNet(nn.Module):
    """Depth set by a method, as Once-for-All's `set_active_subnet(d=...)`."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.out = nn.Linear(8, 4)
        self.depth = 3

    def set_active_subnet(self, d=3):
        self.depth = d

    def forward(self, x):
        for blk in self.blocks[:self.depth]:
            x = torch.relu(blk(x)) + x
        return self.out(x)


def _inputs(n, shape=(1, 3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (0.5 + i % 3) for i in range(n)]


def _same(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        return all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (torch.Tensor, np.ndarray)):
        a, b = (t.detach().numpy() if isinstance(t, torch.Tensor) else t for t in (a, b))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        return True
    assert a == b
    return True


@pytest.fixture(scope="module", params=["torch", "onnx"])
def slim(request):
    torch.manual_seed(0)
    model = SlimCNN().eval()
    cm = dycomp.compile(model, (_inputs(1)[0],), backend=request.param,
                        selectors={"width": WIDTHS})
    return model, cm


def test_every_width_matches_eager(slim):
    model, cm = slim
    for w in WIDTHS:
        exits = set()
        for x in _inputs(8, seed=1):
            out = cm(x, width=w)
            _same(out, model(x, width=w))
            exits.add(out[1])
        assert exits == {0, 1}  # both paths of this sub-network were taken
    assert sorted(cm.params.values()) == sorted(cm.params.values(), key=int)
    assert cm.params[(0,)] < cm.params[(1,)] < cm.params[(2,)]


def test_undeclared_or_missing_width_is_a_clear_error(slim):
    _, cm = slim
    x = _inputs(1)[0]
    with pytest.raises(ValueError, match=r"width=0.3 is not a declared value.*0.25, 0.5, 1.0"):
        cm(x, width=0.3)
    with pytest.raises(ValueError, match="width=1 is not a declared value"):
        cm(x, width=1)  # an int is not the declared float
    with pytest.raises(ValueError, match=r"missing selector argument width=.*keyword.*0.25"):
        cm(x)


def test_run_with_path_names_the_regions(slim):
    model, cm = slim
    x = _inputs(1)[0]
    out, path = cm.run(x, width=0.5, return_path=True)
    _same(out, model(x, width=0.5))
    assert path


def test_setter_selector_and_restored_state():
    torch.manual_seed(0)
    model = DepthNet().eval()
    x = torch.randn(2, 8)
    calls = [("set_active_subnet", {"d": d}) for d in (1, 2, 3)]
    cm = dycomp.compile(model, (x,), selectors={"subnet": calls})
    assert model.depth == 3  # each setter call undone after its capture
    _same(cm(x), _eager_depth(model, x, 1))  # the first declared call until a setter runs
    for d in (3, 2):
        cm.set_active_subnet(d=d)
        for xi in _inputs(3, shape=(2, 8)):
            _same(cm(xi), _eager_depth(model, xi, d))
    with pytest.raises(ValueError, match=r"set_active_subnet\(d=4\) is not a declared call"):
        cm.set_active_subnet(d=4)
    with pytest.raises(AttributeError):
        cm.reset_stitch_id(1)
    with pytest.raises(UnsupportedError, match="raised TypeError"):  # the second call fails
        dycomp.compile(model, (x,), selectors={"a": [("set_active_subnet", {"d": 1})],
                                               "b": [("set_active_subnet", {"q": 1})]})
    assert model.depth == 3  # the first call undone too


def _eager_depth(model, x, d):
    model.set_active_subnet(d=d)
    try:
        return model(x)
    finally:
        model.set_active_subnet(d=3)


def test_argument_and_setter_selectors_combine():
    class Scaled(DepthNet):
        def forward(self, x, scale=1.0):
            return super().forward(x * scale)

    torch.manual_seed(0)
    model = Scaled().eval()
    x = torch.randn(2, 8)
    cm = dycomp.compile(model, (x,), selectors={
        "scale": [0.5, 2.0], "subnet": [("set_active_subnet", (1,)), ("set_active_subnet", (3,))]})
    assert len(cm.subnets) == 4
    cm.set_active_subnet(1)
    model.set_active_subnet(1)
    _same(cm(x, scale=2.0), model(x, scale=2.0))
    model.set_active_subnet(3)
    cm.set_active_subnet(3)
    _same(cm(x, scale=0.5), model(x, scale=0.5))


@pytest.mark.parametrize("selectors, match", [
    ({"width": []}, "non-empty list"),
    ({"width": [0.5, 0.5]}, "declares a value twice"),
    ({"width": [0.5, ("set_active_subnet", {"d": 1})]}, "mixes method calls"),
    ({"width": [float("nan")]}, "cannot be declared"),
    ({"2x": [1]}, "not an identifier"),
    ({"s": [("set_subnet", {"d": 1})]}, "DepthNet has no method 'set_subnet'"),
    ({"s": [("set_active_subnet", {"q": 1})]}, r"set_active_subnet\(q=1\) raised TypeError"),
])
def test_bad_declarations_are_refused(selectors, match):
    with pytest.raises(UnsupportedError, match=match):
        dycomp.compile(DepthNet(), (torch.randn(2, 8),), selectors=selectors)


def test_save_load_shares_weights_and_runs_every_width(tmp_path):
    torch.manual_seed(0)
    model = SlimCNN().eval()
    x0 = _inputs(1)[0]
    cm = dycomp.compile(model, (x0,), backend="onnx", selectors={"width": WIDTHS})
    cm.latency = {(0,): 0.1, (1,): 0.2, (2,): 0.4}
    path = cm.save(tmp_path / "slim.dyc")
    top = (path / "manifest.json").read_text()
    assert '"kind": "selectors"' in top
    full = sum(p.numel() * 4 for p in model.parameters() if p.numel() * 4 >= 256)
    # the four large weights once; the narrower widths' slices are blocks of them
    assert (path / WEIGHTS).stat().st_size < full + 4 * 64
    rt = dycomp.runtime.load(path)
    loaded = dycomp.load(path)
    for w in WIDTHS:
        for x in _inputs(4, seed=2):
            ref = model(x, width=w)
            _same(rt(x.numpy(), width=w), ref)
            _same(loaded(x, width=w), ref)
    assert rt.select(budget_ms=0.25) == {"width": 0.5}  # the latency table was saved
    _cli_runs_one_width(path, tmp_path, model)
    with pytest.raises(ValueError, match="no sub-network runs within 0.05 ms"):
        rt.select(budget_ms=0.05)


def test_corrupted_shared_weights_refused(tmp_path):
    cm = dycomp.compile(DepthNet().eval(), (torch.randn(2, 8),), backend="onnx",
                        selectors={"subnet": [("set_active_subnet", {"d": d}) for d in (1, 3)]})
    path = cm.save(tmp_path / "depth.dyc")
    rt = dycomp.runtime.load(path)
    rt.set_active_subnet(d=3)
    cm.set_active_subnet(d=3)
    x = torch.randn(2, 8)
    _same(rt(x.numpy()), cm(x))
    from dycomp.runtime import trust

    trust.keygen(tmp_path / "k", tmp_path / "k.pub")
    dycomp.runtime.sign(path, tmp_path / "k")  # the top manifest: its hashes cover all
    dycomp.runtime.load(path, public_key=tmp_path / "k.pub")
    sub = path / "subnets" / "1" / "host.py"
    sub.write_text(sub.read_text() + "# changed\n")
    with pytest.raises(dycomp.runtime.ArtifactError, match="host.py: sha256 mismatch"):
        dycomp.runtime.load(path, public_key=tmp_path / "k.pub")
    data = bytearray((path / WEIGHTS).read_bytes())
    data[10] ^= 1
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(dycomp.runtime.ArtifactError, match="weights.bin: sha256 mismatch"):
        dycomp.runtime.load(path)


def test_measure_then_select_the_largest_that_fits(slim):
    _, cm = slim
    table = cm.measure(repeat=3, warmup=1)
    assert set(table) == {f"width={w}" for w in WIDTHS} and all(v > 0 for v in table.values())
    assert cm.select(budget_ms=1e9) == {"width": 1.0}


def _cli_runs_one_width(path, tmp_path, model):
    from dycomp.cli import main

    x = _inputs(1, seed=3)[0]
    np.save(tmp_path / "x.npy", x.numpy())
    argv = ["run", str(path), "--input", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npz")]
    assert main(argv + ["--arg", "width=0.5"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["out_0"],
                               model(x, width=0.5)[0].detach().numpy(), rtol=1e-4, atol=1e-4)
    assert main(argv + ["--arg", "width=0.3"]) == 2
    assert main(argv) == 2
    assert main(["inspect", str(path)]) == 0
    _runs_without_torch(path, x, model)


def _runs_without_torch(path, x, model):
    """The loaded artifact, in a fresh interpreter where `import torch` fails."""
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, dycomp.runtime as rt\n"
            f"m = rt.load({str(path)!r})\n"
            f"y, exit_id = m(np.load({str(path.parent / 'x.npy')!r}), width=0.25)\n"
            "np.save(sys.argv[1], y)")
    out = path.parent / "y_free.npy"
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True)
    np.testing.assert_allclose(np.load(out), model(x, width=0.25)[0].detach().numpy(),
                               rtol=1e-4, atol=1e-4)
