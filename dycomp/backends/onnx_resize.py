"""Bicubic interpolation as four weighted gathers per dimension, for ONNX Runtime.

ONNX Runtime's cubic `Resize` is 20-100x slower than the same work written with its other
kernels (GFNet's 224 -> 96 glance image: 4.4 ms, 41 % of its first region;
1x64x56x56 -> 112: 59 ms; `benchmarks/README.md`). PyTorch's bicubic interpolation of a
4-D input is separable: along each spatial dimension, output `o` is the sum of four taps
`x[i_k(o)] * w_k(o)` (cubic convolution with A = -0.75, indices clamped at the border),
along the width first, then the height. When the input's spatial sizes are static, the
taps and weights are constants, so `F.interpolate(x, mode="bicubic")` and
`nn.Upsample(mode="bicubic")` are rewritten before export into, per dimension, four
`index_select`s weighted and summed in PyTorch's order: the same inputs read with the
same weights, so NaN and infinities spread exactly as in PyTorch.

Each rewrite is first checked against PyTorch's own operator on basis images: the dense
weights (atol 1e-6) and which inputs each output reads (a NaN basis image); any
difference keeps the original call.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from torch import fx, nn

log = logging.getLogger(__name__)

_A = -0.75  # PyTorch's cubic convolution coefficient
_PARAMS = inspect.signature(F.interpolate).parameters


def cubic_taps(n_in: int, n_out: int, align_corners: bool, scale: float | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (int64) and weights (float32), each [4, n_out], of PyTorch's bicubic
    interpolation of `n_in` elements into `n_out` along one dimension, computed in
    float32 in PyTorch's order (source index, guarded start and fraction, coefficients)."""
    f32 = torch.float32
    if align_corners:
        s = (torch.tensor(n_in - 1, dtype=f32) / (n_out - 1)) if n_out > 1 else \
            torch.tensor(0.0, dtype=f32)
    elif scale is not None and scale > 0:
        s = torch.tensor(1.0 / scale, dtype=f32)
    else:
        s = torch.tensor(n_in, dtype=f32) / n_out
    o = torch.arange(n_out, dtype=f32)
    real = s * o if align_corners else s * (o + 0.5) - 0.5
    start = torch.floor(real).clamp(max=n_in - 1)
    t = (real - start).clamp(0, 1)
    idx = torch.stack([(start - 1 + k).clamp(0, n_in - 1).long() for k in range(4)])

    def near(x):  # |x| <= 1
        return ((_A + 2) * x - (_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

    return idx, torch.stack([far(t + 1), near(t), near(1 - t), far((1 - t) + 1)])


def cubic_1d(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Four taps of `x` along `dim` (`idx[k]`), weighted (`w[k]`, shaped to broadcast) and
    summed left to right, as PyTorch's cubic interpolation sums them."""
    out = x.index_select(dim, idx[0]) * w[0]
    for k in range(1, 4):
        out = out + x.index_select(dim, idx[k]) * w[k]
    return out


def _reference(n_in: int, dim: int, call: dict, fill: float) -> torch.Tensor:
    """PyTorch's own operator along `dim` as [n_out, n_in]: basis images (one per input
    index, 1 at it, or `fill` there and 0 elsewhere) interpolated with `call`'s
    arguments, the other spatial dimension of size 1 and scale 1."""
    basis = torch.eye(n_in) if fill == 1 else torch.diag(torch.full((n_in,), fill))
    shape = [n_in, 1, 1, 1]
    shape[dim] = n_in
    kw = dict(call)
    if kw["size"] is not None:
        kw["size"] = [kw["size"][0], 1] if dim == 2 else [1, kw["size"][1]]
    else:
        kw["scale_factor"] = [kw["scale_factor"][0], 1.0] if dim == 2 else \
            [1.0, kw["scale_factor"][1]]
    out = F.interpolate(basis.reshape(shape), **kw)
    return out.reshape(n_in, -1).T


def _checked_taps(n_in: int, n_out: int, dim: int, call: dict):
    """The taps of one dimension, if they read what PyTorch's operator reads with the
    weights it uses; else None. A tap whose index is unique in its output takes
    PyTorch's own weight (read off a basis image: bit for bit what it multiplies by);
    taps clamped onto one border index keep `cubic_taps`' weights (within 1e-6)."""
    scale = call["scale_factor"][dim - 2] if call["scale_factor"] is not None and \
        not call["recompute_scale_factor"] else None
    idx, w = cubic_taps(n_in, n_out, bool(call["align_corners"]), scale)
    ref = _reference(n_in, dim, call, 1.0)
    if ref.shape != (n_out, n_in):
        return None
    unique = (idx.unsqueeze(0) == idx.unsqueeze(1)).sum(0) == 1  # [4, n_out]
    w = torch.where(unique, ref.gather(1, idx.T).T, w)
    dense = torch.zeros(n_out, n_in).scatter_add_(1, idx.T, w.T)
    reads = torch.zeros(n_out, n_in, dtype=torch.bool).scatter_(1, idx.T, True)
    if not torch.allclose(dense, ref, rtol=0, atol=1e-6):
        return None
    if not torch.equal(torch.isnan(_reference(n_in, dim, call, float("nan"))), reads):
        return None
    shape = [4, n_out] + [1] * (3 - dim)
    return idx, w.reshape(shape)


def _call(gm: fx.GraphModule, node: fx.Node) -> dict | None:
    """The interpolate arguments of a bicubic `F.interpolate` / `nn.Upsample` node."""
    if node.op == "call_function" and node.target is F.interpolate:
        try:
            bound = inspect.Signature(list(_PARAMS.values())).bind(*node.args, **node.kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        call = dict(bound.arguments)
        call.pop("input")
    elif node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Upsample:
        m = gm.get_submodule(node.target)
        call = {"size": m.size, "scale_factor": m.scale_factor, "mode": m.mode,
                "align_corners": m.align_corners,
                "recompute_scale_factor": m.recompute_scale_factor, "antialias": False}
    else:
        return None
    if call["mode"] != "bicubic" or call["antialias"]:
        return None
    for key in ("size", "scale_factor"):
        if call[key] is not None and not isinstance(call[key], (list, tuple)):
            call[key] = [call[key]] * 2
    return call


def _plan(gm: fx.GraphModule, node: fx.Node, dynamic: bool):
    """[(dim, idx, weights)] for width then height, if `node` is a bicubic interpolation
    of a static 4-D float input that the taps reproduce; else None."""
    call = _call(gm, node)
    x = node.args[0] if node.args else None
    ex = x.meta.get("example") if isinstance(x, fx.Node) else None
    out = node.meta.get("example")
    if call is None or not isinstance(ex, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    if ex.dim() != 4 or out.dim() != 4 or ex.dtype != torch.float32:
        return None
    if dynamic and {2, 3} & set(x.meta.get("sym", ())):
        return None
    plan = []
    for dim in (3, 2):
        taps = _checked_taps(ex.shape[dim], out.shape[dim], dim, call)
        if taps is None:
            log.debug("bicubic interpolation %s kept: its taps differ from PyTorch's",
                      node.name)
            return None
        plan.append((dim, taps[0], taps[1].to(ex.dtype)))
    return plan


def lower_bicubic(gm: fx.GraphModule, dynamic: bool = False) -> fx.GraphModule:
    """`gm`, or a copy (sharing its modules) whose bicubic interpolations of static
    spatial sizes are weighted gathers (`cubic_1d`), their taps as buffers."""
    plans = {n: p for n in gm.graph.nodes if (p := _plan(gm, n, dynamic)) is not None}
    if not plans:
        return gm
    new = fx.GraphModule(gm, gm.graph, class_name=type(gm).__name__)
    graph = new.graph = fx.Graph()
    env: dict = {}
    graph.output(graph.graph_copy(gm.graph, env))
    for i, (node, plan) in enumerate(plans.items()):
        old = env[node]
        with graph.inserting_before(old):
            y = old.args[0]
            for dim, idx, w in plan:
                attr = f"_dycomp_bicubic{i}_{dim}"
                new.register_buffer(attr + "_idx", idx)
                new.register_buffer(attr + "_w", w)
                y = graph.call_function(cubic_1d, (y, dim, graph.get_attr(attr + "_idx"),
                                                   graph.get_attr(attr + "_w")))
        y.meta = dict(old.meta)
        old.replace_all_uses_with(y)
        graph.erase_node(old)
    new.recompile()
    return new
