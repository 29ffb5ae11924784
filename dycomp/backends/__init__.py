"""Backends lower DynGraph regions to something an executor can run."""

from __future__ import annotations

from dycomp.errors import UnsupportedError


def lower(graph, backend: str, **options):
    """An executor for the graph's regions on the named backend.

    Options: onnx: `threads` (intra-op threads per session, default 2), `opset`, `fuse`;
    tvm: `threads`, `opset`, `tune` (a TuneConfig), `strict`."""
    if backend == "torch":
        from dycomp.backends.torch_backend import TorchExecutor

        return TorchExecutor(graph)
    if backend == "onnx":
        from dycomp.backends.onnx_backend import lower_onnx

        return lower_onnx(graph, **options)
    if backend == "tvm":
        from dycomp.backends.tvm_backend import lower_tvm

        return lower_tvm(graph, **options)
    raise UnsupportedError(f"unknown backend {backend!r}",
                           hint="use backend='torch', 'onnx' or 'tvm'")
