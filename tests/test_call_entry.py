"""The per-call entry specialised to the signature (dycomp/fastcall.py) and the runtime's
exact-input check: same outputs as eager, zero-copy torch <-> numpy, the general path's
errors for every call it does not expect, and thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
import dycomp.runtime
from dycomp.fastcall import build, to_torch


class Scaled(nn.Module):
    """Two tensor inputs around a baked int; returns a nested structure with Python
    values, like a multi-exit model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x, k, y):
        h = torch.relu(self.a(x)) * k
        if h.sum() > y.sum():
            return (self.b(h), y), 1, True
        return (h, y + 1), 0, False


def _inputs(n=12):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 6, generator=g), 3, torch.randn(2, 6, generator=g) * 4)
            for _ in range(n)]


@pytest.fixture(scope="module")
def scaled():
    model = Scaled().eval()
    x, k, y = _inputs(1)[0]
    return model, dycomp.compile(model, (x, k, y), backend="onnx")


def _close(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for u, v in zip(a, b):
            _close(u, v)
    else:
        assert type(a) is type(b) and a == b


def test_fast_entry_matches_eager_on_every_path_without_the_general_path(scaled):
    model, cm = scaled
    entry = build(cm.spec, cm.program.run, lambda a, k: pytest.fail("general path taken"))
    branches = set()
    with torch.no_grad():
        for x, k, y in _inputs():
            want = model(x, k, y)
            _close(want, cm(x, k, y))
            _close(want, entry((x, k, y), {}))
            got = entry((x.numpy(), k, y.numpy()), {})
            _close(want, to_torch(got))
            assert isinstance(got[0][0], np.ndarray)
            branches.add(want[1])
    assert branches == {0, 1}


def test_other_calls_take_the_general_path_with_its_errors(scaled):
    model, cm = scaled
    x, k, y = _inputs(1)[0]
    sig = r"expected.*\(x: float32\[2, 6\], k=3, y: float32\[2, 6\]\)"
    for bad in [(torch.randn(1, 6), k, y), (x.double(), k, y), (x, k), (x, k, y, y),
                (x.numpy().astype(np.float64), k, y.numpy()), (x, 4, y), (x, 3.0, y),
                (x.tolist(), k, y)]:
        with pytest.raises(ValueError, match=sig):
            cm(*bad)
    with pytest.raises(ValueError, match=sig):
        cm(x, k, y=y)  # keywords: flattened differently from the compiled call
    # a tensor that needs grad, a mix of numpy and torch: converted, as before
    with torch.no_grad():
        want = model(x, k, y)
    _close(want, cm(x.clone().requires_grad_(), k, y))
    _close(want, cm(x.numpy(), k, y))
    _close(want, cm(torch.nn.Parameter(x.clone()), k, y))


def test_outputs_share_memory_with_session_outputs_and_inputs():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = to_torch(a)
    assert t.data_ptr() == a.ctypes.data  # zero-copy
    ro = a.copy()
    ro.flags.writeable = False
    assert torch.equal(to_torch(ro), torch.from_numpy(a))  # a copy, and no warning
    flipped = a[::-1]
    assert torch.equal(to_torch(flipped), torch.from_numpy(flipped.copy()))
    assert to_torch(({"k": a}, [a, 2], None))[0]["k"].data_ptr() == a.ctypes.data


def test_entry_follows_an_executor_swap(scaled):
    _, cm = scaled
    x, k, y = _inputs(1)[0]
    seen = []
    inner = cm.program.executor

    class Recording:
        def __call__(self, region, *args):
            seen.append(region)
            return inner(region, *args)

    with cm.program.using(Recording()):
        cm(x, k, y)
    assert seen
    cm(x, k, y)
    assert len(seen) == 1  # the swap back is followed too


def test_threads_share_the_entry(scaled):
    model, cm = scaled
    inputs = _inputs(16)
    with torch.no_grad():
        want = [model(*i) for i in inputs]
    errors = []

    def work(offset):
        try:
            for j in range(40):
                i = (j + offset) % len(inputs)
                _close(want[i], cm(*inputs[i]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_runtime_exact_inputs_and_errors(scaled, tmp_path):
    model, cm = scaled
    rt = dycomp.runtime.load(cm.save(tmp_path / "s"))
    x, k, y = _inputs(1)[0]
    with torch.no_grad():
        want = model(x, k, y)
    _close(want, to_torch(rt(x.numpy(), y.numpy())))
    _close(want, to_torch(rt.run(x.numpy(), y.numpy())))
    _close(want, to_torch(rt(x.tolist(), y.tolist())))  # lists still convert
    out, path = rt(x.numpy(), y.numpy(), return_path=True)
    assert path
    for bad, what in [((x.numpy(),), "got 1 inputs"),
                      ((x.numpy().astype(np.float64), y.numpy()), "dtype float64"),
                      ((x.numpy()[:1], y.numpy()), r"shape \[1, 6\]")]:
        with pytest.raises(ValueError, match=what + r".*expected \(x: float32\[2, 6\], y"):
            rt(*bad)
