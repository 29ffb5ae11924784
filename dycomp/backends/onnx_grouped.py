"""Grouped matrix products and histograms, for ONNX export.

transformers' default experts implementation (`grouped_mm`, what `from_pretrained` picks)
sorts the (token, expert) pairs by expert, counts them per expert with `torch.histc` and
multiplies each group of rows by its expert's weights with `torch._grouped_mm` (`offs`:
the cumulative row count per group). Neither exports to ONNX. Before export they are
rewritten with exportable ops: each row's group is the number of offsets at or below it,
and the row is multiplied by its group's weight matrix (`index_select` + `matmul`), the
same products as the grouped kernel (rows past the last offset, which the kernel leaves
uninitialized, are zero); `histc` becomes the bin of each element, as PyTorch computes it
(`(x - min) * bins / (max - min)` in the input's dtype, truncated; `max` in the last
bin; NaN and elements out of range counted nowhere), one-hot and summed.
"""

from __future__ import annotations

import torch
from torch import fx

_GROUPED = {torch._grouped_mm, getattr(torch.nn.functional, "grouped_mm", torch._grouped_mm)}


def grouped_mm_rows(a: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """`torch._grouped_mm(a [S, K], w [G, K, N], offs [G])` row by row."""
    rows = torch.arange(a.shape[0], device=a.device)
    group = (rows.unsqueeze(1) >= offs.to(torch.int64).unsqueeze(0)).sum(1)
    inside = group < w.shape[0]
    out = torch.matmul(a.unsqueeze(1), w.index_select(0, group.clamp(max=w.shape[0] - 1)))
    out = out.squeeze(1)
    return torch.where(inside.unsqueeze(1), out, torch.zeros_like(out))


def histc_bins(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """`torch.histc(x, bins, lo, hi)` with `lo < hi`."""
    flat = x.reshape(-1)
    valid = (flat >= lo) & (flat <= hi)  # False for NaN
    pos = ((flat - lo) * bins / (hi - lo)).to(torch.int64).clamp(0, bins - 1)
    hot = torch.nn.functional.one_hot(pos, bins) * valid.unsqueeze(1)
    return hot.sum(0).to(x.dtype)


def _grouped_args(n: fx.Node):
    if n.op != "call_function" or n.target not in _GROUPED:
        return None
    kw = dict(n.kwargs)
    offs = kw.pop("offs", n.args[2] if len(n.args) > 2 else None)
    if offs is None or len(n.args) > 3 or any(v is not None for v in kw.values()):
        return None  # no groups, a bias, a scale or an output dtype: left as it is
    a, w = n.args[:2]
    ex = [x.meta.get("example") if isinstance(x, fx.Node) else None for x in (a, w)]
    if any(e is None for e in ex) or ex[0].dim() != 2 or ex[1].dim() != 3:
        return None
    return grouped_mm_rows, (a, w, offs)


def _histc_args(n: fx.Node):
    if n.op != "call_function" or n.target is not torch.histc:
        return None
    names = ("input", "bins", "min", "max")
    given = dict(zip(names, n.args)) | dict(n.kwargs)
    bins, lo, hi = given.get("bins", 100), given.get("min", 0), given.get("max", 0)
    if not all(isinstance(v, (int, float)) for v in (bins, lo, hi)) or not lo < hi:
        return None  # bounds from the data (min == max): left as it is
    return histc_bins, (given["input"], int(bins), float(lo), float(hi))


def rewritten(node: fx.Node) -> bool:
    """Whether `lower_grouped` rewrites `node` (export diagnosis skips it)."""
    return (_grouped_args(node) or _histc_args(node)) is not None


def lower_grouped(gm: fx.GraphModule) -> fx.GraphModule:
    """`gm`, or a copy (sharing its modules) with `_grouped_mm` and `histc` rewritten."""
    todo = [(n, r) for n in gm.graph.nodes for r in (_grouped_args(n) or _histc_args(n),)
            if r is not None]
    if not todo:
        return gm
    graph = fx.Graph()
    env: dict = {}
    graph.output(graph.graph_copy(gm.graph, env))
    for n, (fn, args) in todo:
        new = env[n]
        args = tuple(env[a] if isinstance(a, fx.Node) else a for a in args)
        with graph.inserting_before(new):
            rep = graph.call_function(fn, args)
        rep.meta = dict(new.meta)
        new.replace_all_uses_with(rep)
        graph.erase_node(new)
    return fx.GraphModule(gm, graph, class_name=type(gm).__name__)
