"""Differential testing of a compiled model against eager PyTorch."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map

from dycomp.errors import MismatchError


def tensor_leaves(out) -> list[np.ndarray]:
    """The tensors (torch or numpy) of a nested output, as numpy arrays, in order."""
    return [x.detach().numpy() if isinstance(x, torch.Tensor) else x
            for x in tree_flatten(out)[0] if isinstance(x, (torch.Tensor, np.ndarray))]


def variants(args: tuple, kwargs: dict, n: int = 8, seed: int = 0):
    """The example inputs plus `n` random inputs of the same shapes and dtypes."""
    g = torch.Generator().manual_seed(seed)
    yield args, kwargs
    scales = [1.0, 0.5, 2.0, 0.1, 3.0]
    for i in range(n):
        def rand(x, i=i):
            if not isinstance(x, torch.Tensor):
                return x
            if x.dtype.is_floating_point:
                return torch.randn(x.shape, generator=g, dtype=x.dtype) * scales[i % len(scales)]
            if x.dtype == torch.bool:
                return torch.rand(x.shape, generator=g) > 0.5
            lo, hi = (int(x.min()), int(x.max()) + 1) if x.numel() else (0, 1)
            return torch.randint(lo, max(hi, lo + 1), x.shape, generator=g, dtype=x.dtype)
        yield tree_map(rand, args), tree_map(rand, kwargs)


def compare(expected, actual, where="out", atol=1e-4, rtol=1e-4) -> str | None:
    """None if equal (tensors within tolerance), else a description of the first difference."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return f"{where}: expected a tensor, got {type(actual).__name__}"
        if expected.shape != actual.shape or expected.dtype != actual.dtype:
            return (f"{where}: expected {expected.dtype}{list(expected.shape)}, got "
                    f"{actual.dtype}{list(actual.shape)}")
        if not torch.allclose(expected.float(), actual.float(), atol=atol, rtol=rtol,
                              equal_nan=True):
            diff = (expected.float() - actual.float()).abs().max().item()
            return f"{where}: values differ (max abs diff {diff:.3g})"
        return None
    if isinstance(expected, (list, tuple)):
        if type(expected) is not type(actual) or len(expected) != len(actual):
            return f"{where}: expected {type(expected).__name__} of {len(expected)}, got {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            d = compare(e, a, f"{where}[{i}]", atol, rtol)
            if d:
                return d
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            return f"{where}: expected keys {sorted(expected)}, got {actual!r}"
        for k in expected:
            d = compare(expected[k], actual[k], f"{where}[{k!r}]", atol, rtol)
            if d:
                return d
        return None
    if isinstance(expected, float) and isinstance(actual, (float, np.floating)):
        return None if abs(expected - actual) <= atol + rtol * abs(expected) else (
            f"{where}: expected {expected}, got {actual}")
    if expected != actual or type(expected) is not type(actual):
        return f"{where}: expected {expected!r}, got {actual!r}"
    return None


def compare_structure(expected, actual, where="out") -> str | None:
    """None if both outputs have the same structure: containers of the same type and
    length, tensors of the same dtype and rank, other values of the same type (what a
    model that draws random numbers can be checked for: its values differ per call)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or expected.dtype != actual.dtype or \
                expected.dim() != actual.dim():
            return f"{where}: expected a {expected.dtype} tensor of rank {expected.dim()}, " \
                   f"got {actual!r}"
        return None
    if isinstance(expected, (list, tuple, dict)):
        if type(expected) is not type(actual) or len(expected) != len(actual):
            return f"{where}: expected {type(expected).__name__} of {len(expected)}, got {actual!r}"
        keys = expected if isinstance(expected, dict) else range(len(expected))
        for i in keys:
            d = compare_structure(expected[i], actual[i] if isinstance(actual, (list, tuple))
                                  else actual.get(i), f"{where}[{i!r}]")
            if d:
                return d
        return None
    same = type(expected) is type(actual) or (isinstance(expected, float) and isinstance(
        actual, (float, np.floating)))
    return None if same else f"{where}: expected a {type(expected).__name__}, got {actual!r}"


def _outcome(fn, cm, a, k):
    """Eager and compiled outputs, or the exceptions they raised (a model's own `raise`
    or `assert`), and the compiled path."""
    try:
        with torch.no_grad():
            expected = fn(*copy.deepcopy(a), **copy.deepcopy(k))
    except Exception as e:
        expected = e
    try:
        actual, path = cm.run(*a, return_path=True, **k)
    except Exception as e:
        actual, path = e, ["raised"]
    return expected, actual, path


def compare_raised(expected, actual) -> str | None:
    """None if both raised an exception of the same class name and message."""
    def name(x):
        return type(x).__name__ if isinstance(x, BaseException) else "no exception"

    if name(expected) != name(actual) or str(expected) != str(actual):
        return f"expected {name(expected)}({expected}), got {name(actual)}" + (
            f"({actual})" if isinstance(actual, BaseException) else "")
    return None


def differential_check(fn, cm, args, kwargs, n: int = 8, random: bool = False) -> int:
    """Run eager and compiled on the examples and `n` generated inputs; raise on mismatch.

    `random`: the model draws random numbers, so eager and compiled outputs differ in
    value and may take other paths: only their structure is compared."""
    count = 0
    for a, k in variants(args, kwargs, n):
        expected, actual, path = _outcome(fn, cm, a, k)
        if isinstance(expected, BaseException) or isinstance(actual, BaseException):
            diff = compare_raised(expected, actual)
        else:
            diff = (compare_structure if random else compare)(expected, actual)
        if diff:
            raise MismatchError(f"compiled model differs from eager on input #{count}: {diff} "
                                f"(compiled path: {' -> '.join(path)})")
        count += 1
    return count
