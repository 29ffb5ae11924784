"""Shared test helpers: differential testing against eager PyTorch."""

from __future__ import annotations

import copy

import torch

import dycomp
from dycomp.check import compare


def assert_matches_eager(fn, inputs, cm=None, backend="torch", outputs=None, **compile_kw):
    """Compile `fn` (a bound method or module) on inputs[0] and compare with eager on every
    input. Returns (compiled model, list of compiled paths); the compiled outputs are
    appended to `outputs` if given."""
    first = inputs[0] if isinstance(inputs[0], tuple) else (inputs[0],)
    if cm is None:
        cm = dycomp.compile(fn, first, backend=backend, check=False, **compile_kw)
    paths = []
    for i, inp in enumerate(inputs):
        inp = inp if isinstance(inp, tuple) else (inp,)
        with torch.no_grad():
            expected = fn(*copy.deepcopy(inp))
        actual, path = cm.run(*inp, return_path=True)
        diff = compare(expected, actual)
        assert diff is None, f"input {i}: {diff} (path {path})\n{cm.host_source}"
        paths.append(path)
        if outputs is not None:
            outputs.append(actual)
    return cm, paths


def randn_inputs(shape, n, seed=0, scales=(0.3, 1.0, 3.0)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * scales[i % len(scales)] for i in range(n)]
