"""The contenders `dycomp bench` compares: how each is built and called.

Each builder takes the model's entry point and example inputs and returns a callable
with the entry point's signature, or raises: a contender that fails to build is shown
as "failed: <reason>" and the bench goes on. Tracing contenders (`jit-trace`,
`onnx-export`) build fine and then answer wrongly on other paths: the correctness
check beside the timings shows it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.utils._pytree import tree_flatten

from dycomp.benchmark import CONTENDERS, DYCOMP
from dycomp.check import tensor_leaves


def build(name: str, fn, example: tuple, threads: int, passes=()) -> tuple[Callable, object]:
    """(callable, the compiled object or None) for contender `name`."""
    if name in DYCOMP:
        import dycomp

        optimize = "no-opt" not in passes  # the `--passes no-opt` marker
        passes = [p for p in passes if p != "no-opt"]
        cm = dycomp.compile(fn, example, backend=name, threads=threads, passes=passes,
                            optimize=optimize)
        return cm, cm
    builders = {"eager": lambda: fn, "torchscript": lambda: _script(fn),
                "torch-compile": lambda: _compile(fn),
                "jit-trace": lambda: _trace(fn, example),
                "onnx-export": lambda: _onnx_export(fn, example, threads)}
    if name not in builders:
        raise ValueError(f"unknown contender {name!r}; use {', '.join(CONTENDERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return builders[name](), None


def _compile(fn):
    """torch.compile with its default backend; its graph-break warnings are quiet (the
    report shows what matters: time and correctness)."""
    import logging

    torch._logging.set_logs(dynamo=logging.ERROR)
    return torch.compile(fn)


def _script(fn):
    module = fn.__self__
    scripted = torch.jit.script(module)
    return getattr(scripted, fn.__name__)


def _trace(fn, example):
    module = fn.__self__
    if fn.__name__ == "forward":
        return torch.jit.trace(module, example, check_trace=False, strict=False)
    traced = torch.jit.trace_module(module, {fn.__name__: example}, check_trace=False,
                                    strict=False)
    return getattr(traced, fn.__name__)


class _Wrapper(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.inner, self.fn = fn.__self__, fn

    def forward(self, *args):
        return tuple(x for x in tree_flatten(self.fn(*args))[0] if isinstance(x, torch.Tensor))


def _onnx_export(fn, example, threads: int):
    """The whole model through `torch.onnx.export` (one traced path), on ONNX Runtime; its
    outputs are the tensor leaves of the model's output, in order."""

    from dycomp.runtime.onnx_executor import cpu_session, session_options

    buf = io.BytesIO()
    wrapper = _Wrapper(fn).train(fn.__self__.training)  # export restores this mode
    torch.onnx.export(wrapper, example, buf, dynamo=False, opset_version=17)
    # dycomp's own session settings (no worker spinning between runs): a fair contender
    session = cpu_session(buf.getvalue(), session_options(threads))
    names = [i.name for i in session.get_inputs()]

    def run(*args):
        arrays = [a.numpy() for a in args if isinstance(a, torch.Tensor)]
        return tuple(session.run(None, dict(zip(names, arrays))))
    return run


def same_answer(expected, actual, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    """Do two outputs hold the same tensors (shapes and values within tolerance)?"""
    a, b = tensor_leaves(expected), tensor_leaves(actual)
    return len(a) == len(b) and all(
        x.shape == y.shape and np.allclose(x, y, atol=atol, rtol=rtol) for x, y in zip(a, b))
