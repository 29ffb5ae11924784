"""Backends lower DynGraph regions to something an executor can run."""

from dycomp.errors import UnsupportedError


def lower(graph, backend: str, **options):
    """An executor for the graph's regions on the named backend."""
    if backend == "torch":
        from dycomp.backends.torch_backend import TorchExecutor

        return TorchExecutor(graph)
    raise UnsupportedError(f"unknown backend {backend!r}", hint="use backend='torch'")
