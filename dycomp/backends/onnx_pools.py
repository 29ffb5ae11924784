"""Adaptive average pooling whose output size does not divide its input, for ONNX.

`torch.onnx.export` refuses `adaptive_avg_pool{1,2}d` unless the output size divides the
input size. When the input's shape is static, each output bin is a fixed window
(`start = floor(i * n / out)`, `end = ceil((i + 1) * n / out)`, as PyTorch computes it), so
the pool is rewritten before export into one mean per bin, concatenated.
"""

from __future__ import annotations

import math

import torch
from torch import fx, nn

_FUNCS = {torch.nn.functional.adaptive_avg_pool2d: 2, torch._C._nn.adaptive_avg_pool2d: 2,
          torch.nn.functional.adaptive_avg_pool1d: 1, torch.adaptive_avg_pool1d: 1}


def bins(n: int, out: int) -> tuple[tuple[int, int], ...]:
    """PyTorch's windows of adaptive pooling of `n` elements into `out`."""
    return tuple((i * n // out, math.ceil((i + 1) * n / out)) for i in range(out))


def pool_bins(x: torch.Tensor, windows: tuple) -> torch.Tensor:
    """Mean over each window of the last len(windows) dimensions (a window per dimension
    per output index), concatenated in output order."""
    if not windows:
        return x
    d = -len(windows)
    return torch.cat([pool_bins(x.narrow(d, s, e - s), windows[1:]).mean(d, keepdim=True)
                      for s, e in windows[0]], d)


def lower_adaptive_pools(gm: fx.GraphModule, dynamic: bool = False) -> fx.GraphModule:
    """`gm`, or a copy (sharing its modules) whose non-dividing adaptive average pools on
    static shapes are explicit per-bin means. `dynamic` (a region exported with dynamic
    axes, where the exporter cannot read the pooled sizes): every pool whose pooled dims
    do not vary (`meta["sym"]`) and whose output is not 1x1, dividing or not."""
    todo = [n for n in gm.graph.nodes if _windows(gm, n, dynamic) is not None]
    if not todo:
        return gm
    graph = fx.Graph()
    env: dict = {}
    out = graph.graph_copy(gm.graph, env)
    graph.output(out)
    for n in todo:
        new = env[n]
        with graph.inserting_before(new):
            rep = graph.call_function(pool_bins, (new.args[0], _windows(gm, n, dynamic)))
        rep.meta = dict(new.meta)
        new.replace_all_uses_with(rep)
        graph.erase_node(new)
    return fx.GraphModule(gm, graph, class_name=type(gm).__name__)


def _windows(gm: fx.GraphModule, node: fx.Node, dynamic: bool = False):
    """Per pooled dimension, its windows, if `node` is a non-dividing adaptive average
    pool with a static input shape; else None."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        rank = {nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool1d: 1}.get(type(mod))
        size = mod.output_size if rank else None
    elif node.op == "call_function" and node.target in _FUNCS:
        rank = _FUNCS[node.target]
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
    else:
        return None
    x = node.args[0] if node.args else None
    ex = x.meta.get("example") if isinstance(x, fx.Node) else None
    if rank is None or not isinstance(ex, torch.Tensor):
        return None
    dims = list(ex.shape[-rank:])
    sizes = [size] * rank if isinstance(size, int) else list(size)
    sizes = [d if s is None else s for s, d in zip(sizes, dims)]
    if dynamic:
        pooled = set(range(ex.dim() - rank, ex.dim()))
        if pooled & set(x.meta.get("sym", ())) or all(s == 1 for s in sizes):
            return None
    elif all(d % s == 0 for s, d in zip(sizes, dims)):
        return None
    return tuple(bins(d, s) for d, s in zip(dims, sizes))
