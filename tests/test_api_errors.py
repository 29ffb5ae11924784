"""Python API contract: signatures, errors, thread safety, self-checking, torch-free runtime."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
from dycomp.check import compare


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.g, self.f = nn.Linear(8, 1), nn.Linear(8, 8)

    def forward(self, x):
        if self.g(x) > 0:
            return self.f(x), 1
        return x, 0


def test_call_with_numpy_returns_numpy_and_torch_returns_torch():
    cm = dycomp.compile(Gated().eval(), (torch.randn(1, 8),))
    x = torch.randn(1, 8)
    out_t = cm(x)
    out_n = cm(x.numpy())
    assert isinstance(out_t[0], torch.Tensor) and isinstance(out_n[0], np.ndarray)
    assert isinstance(out_t[1], int)
    assert np.allclose(out_t[0].numpy(), out_n[0])


def test_wrong_inputs_name_the_signature():
    cm = dycomp.compile(Gated().eval(), (torch.randn(1, 8),))
    with pytest.raises(ValueError, match=r"expected \(x: float32\[1, 8\]\)"):
        cm(torch.randn(2, 8))
    with pytest.raises(ValueError, match="dtype"):
        cm(torch.randn(1, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected"):
        cm(torch.randn(1, 8), torch.randn(1, 8))


@pytest.mark.parametrize("return_path", [False, True])
def test_a_failing_subgraph_is_named_with_its_source_line(return_path):
    """An error inside a subgraph call says which subgraph and which source line."""
    cm = dycomp.compile(Gated().eval(), (torch.randn(1, 8),), backend="onnx",
                        fuse_branches=False)
    first = next(iter(cm.graph.regions))

    class Failing:
        def __call__(self, region, *args):
            raise OSError("disk on fire")

    with cm.program.using(Failing()):
        with pytest.raises(RuntimeError, match=rf"subgraph {first} \(from test_api_errors"
                                               r"\.py:\d+.*\): disk on fire"):
            run = cm.program.run_path if return_path else cm.program.run
            run(np.ones((1, 8), np.float32))


def test_thread_safe_calls():
    m = Gated().eval()
    cm = dycomp.compile(m, (torch.randn(1, 8),))
    xs = [torch.randn(1, 8) for _ in range(64)]
    with torch.no_grad():
        expected = [m(x) for x in xs]
    errors = []

    def worker(k):
        for i in range(k, len(xs), 4):
            if compare(expected[i], cm(xs[i])) is not None:
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


class Unsupported(nn.Module):
    def forward(self, x):
        while x.sum() > 0:
            x = x - 1
        else:
            x = x + 1
        return x


def test_unsupported_error_names_file_line_construct_and_hint():
    with pytest.raises(dycomp.UnsupportedError) as info:
        dycomp.compile(Unsupported(), (torch.randn(1, 4),))
    msg = str(info.value)
    assert "test_api_errors.py:" in msg and "loop `else:`" in msg and "Hint:" in msg


class NumpyOnTensor(nn.Module):
    def forward(self, x):
        return torch.from_numpy(np.sort(x.numpy()))


class BoolInLibrary(nn.Module):
    def forward(self, x):
        return torch.tensor([1.0]) if torch.is_nonzero(x.sum() > 0) else x


def test_data_dependent_python_value_from_torch_is_refused():
    with pytest.raises(dycomp.UnsupportedError, match="data-dependent Python value"):
        dycomp.compile(BoolInLibrary(), (torch.randn(1, 4),))


class Wrong(nn.Module):
    """Uses the input's identity: capture cannot see that, so the self-check catches it."""

    def forward(self, x):
        return x * float(np.random.rand())


def test_check_raises_mismatch_with_path():
    with pytest.raises(dycomp.MismatchError, match="differs from eager"):
        dycomp.compile(Wrong(), (torch.randn(1, 4),), check=True)


def test_bad_method_name():
    with pytest.raises(dycomp.UnsupportedError, match="no method 'nope'"):
        dycomp.compile(Gated(), (torch.randn(1, 8),), method="nope")


def test_runtime_never_imports_torch():
    """Load and run a host program with torch made unimportable."""
    code = r'''
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np
import dycomp.runtime as rt
src = """
import math

import numpy as np


def run(R, x):
    v1, = R('r0', x)
    if bool(v1.sum() > 0):
        return v1, 1
    return x, 0
"""
prog = rt.HostProgram(src, lambda name, x: (x * 2,))
out, path = prog.run_path(np.ones((1, 2), np.float32))
assert path == ("r0",) and out[1] == 1, out
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print("ok")
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_import_dycomp_is_lazy_about_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, dycomp, dycomp.runtime; "
                        "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
