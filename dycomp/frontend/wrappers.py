"""Library wrappers around user functions that capture sees through.

`@torch.no_grad()`, `@torch.inference_mode()`, `@torch.enable_grad()` and
`@torch.set_grad_enabled(b)` wrap a function in library code (`torch/utils/_contextlib.py`),
which dycomp does not convert: the user's function inside is converted instead. Grad mode
changes no value a compiled region computes (regions are inference graphs, and capture
runs under `torch.no_grad()` already).
"""

from __future__ import annotations

import types

import torch

_GRAD_MODES = (torch.no_grad, torch.enable_grad, torch.inference_mode, torch.set_grad_enabled)


def unwrap_grad_mode(f):
    """The function a grad-mode decorator wraps (bound again if `f` is a bound method), or
    `f` itself."""
    if isinstance(f, types.MethodType):
        inner = unwrap_grad_mode(f.__func__)
        return f if inner is f.__func__ else types.MethodType(inner, f.__self__)
    if not isinstance(f, types.FunctionType) or not f.__code__.co_filename.endswith(
            "_contextlib.py") or "ctx_factory" not in f.__code__.co_freevars:
        return f
    cells = dict(zip(f.__code__.co_freevars, f.__closure__ or ()))
    factory = cells["ctx_factory"].cell_contents
    ctx = getattr(factory, "__self__", factory)
    inner = cells.get("func")
    if not isinstance(ctx, _GRAD_MODES) or inner is None:
        return f
    return unwrap_grad_mode(inner.cell_contents)
