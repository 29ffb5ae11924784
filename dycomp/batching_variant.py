"""Rows variants of regions: one call for a group of samples of a path-split model.

A region whose inputs hold one row per sample (batch 1; `batching_rows` state `rows`) is
exact per row, except where it makes a per-sample scalar: a reduction over the whole
tensor (`p.max()`, state `reduced`), which at batch B would reduce over the batch. Its
*rows variant* is the same FX graph with each such reduction taken over every dim but 0
(`p.max()` -> `p.flatten(1).amax(1)`), the values computed from it kept per row, and
literal batch-1 shapes (`view(1, -1)`) made batch-free: at batch B, row i of every
output is what the region gives for sample i alone (a scalar output gains a leading
batch dim). Built only where that holds by construction (whole-tensor reductions of a
known kind, elementwise work on their results of the same rank), and then checked:
run in torch and in ONNX Runtime at batch 2 and 5 on distinct rows, every value's shape
and every output row must match the original region run on that row alone. Anything
else keeps the region one sample at a time, with the reason in the manifest.

Exported with dim 0 dynamic as `subgraphs/<region>.rows.onnx`, recorded in the
manifest's `batching.subgraphs[region].rows_variant` (`runtime/batch_rows.py` calls it).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import fx, nn

from dycomp.batching_rows import (
    _ELEMENTWISE,
    CONST,
    REDUCED,
    ROWS,
    NotRowwise,
    _op_name,
    _where,
    node_states,
)

log = logging.getLogger(__name__)

# Whole-tensor reduction -> the same reduction over dim 1 of the row-flattened value, with
# the keyword arguments that carry over unchanged. Exact per row: at batch 1 the whole
# tensor is that one row, and these reduce in the same element order.
_PER_ROW = {
    "sum": (torch.sum, {"dtype"}), "mean": (torch.mean, {"dtype"}),
    "prod": (torch.prod, {"dtype"}), "max": (torch.amax, set()), "amax": (torch.amax, set()),
    "min": (torch.amin, set()), "amin": (torch.amin, set()), "any": (torch.any, set()),
    "all": (torch.all, set()), "argmax": (torch.argmax, set()),
    "argmin": (torch.argmin, set()), "count_nonzero": (torch.count_nonzero, set()),
    "std": (torch.std, set()), "var": (torch.var, set()),
    "norm": (torch.linalg.vector_norm, set()),  # `x.norm()`: the 2-norm of all elements
}
# Elementwise ops that may take a per-sample scalar (no weights, no shapes of their own).
_SCALAR_OPS = _ELEMENTWISE - {
    "linear", "conv1d", "conv2d", "layer_norm", "interpolate", "adaptive_avg_pool2d",
    "adaptive_avg_pool1d", "avg_pool2d", "max_pool2d", "embedding", "copy_", "fill_",
    "zeros_like", "ones_like", "full_like", "dropout"}
_SCALAR_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.LeakyReLU,
                   nn.ELU, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Identity)
_RESHAPES = {"view", "reshape"}
_VIEWS_TO_SCALAR = {"view", "reshape", "flatten", "squeeze"}
_NEW = {"new_zeros", "new_ones", "new_full", "new_empty"}
_CHECK_SIZES = (5, 2)
_TOL = 1e-4


class NoVariant(Exception):
    """Why a region gets no rows variant (the node and its source line)."""


def build_variant(gm: fx.GraphModule, inputs: list) -> tuple[fx.GraphModule, dict]:
    """The rows variant of `gm` for inputs of `batching_rows` states `inputs`, and its
    kinds: {"inputs": ["rows" | "const"], "outputs": ["rows" | "scalar" | "const"]}.
    Raises NoVariant."""
    try:
        states = node_states(gm, inputs)
    except NotRowwise as e:
        raise NoVariant(str(e)) from None
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, env))
    for old, new in env.items():
        if old in states:  # for `check_torch`: the shape each value must have
            new.meta["dycomp_rows"] = states[old].kind
    for old in list(gm.graph.nodes):
        if old.op != "output":
            _rewrite(gm, old, env, states)
    variant = fx.GraphModule(gm, graph)
    outs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    kinds = {"inputs": [_input_kind(p, states) for p in _placeholders(gm)],
             "outputs": [_output_kind(o, states) for o in outs]}
    return variant, kinds


def _placeholders(gm) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _example(n):
    return n.meta.get("example") if isinstance(n, fx.Node) else None


def _input_kind(p: fx.Node, states: dict) -> str:
    st = states[p].kind
    ex = _example(p)
    if st == REDUCED:
        raise NoVariant(f"input {p.name} is a per-sample scalar of a tensor")
    if not isinstance(ex, torch.Tensor):
        raise NoVariant(f"input {p.name} is not a tensor ({type(ex).__name__})")
    if st == ROWS and not (isinstance(ex, torch.Tensor) and ex.dim() and ex.shape[0] == 1):
        raise NoVariant(f"input {p.name} is not one row per sample (shape "
                        f"{list(getattr(ex, 'shape', []))})")
    return "rows" if st == ROWS else "const"


def _output_kind(o, states: dict) -> str:
    st = states.get(o).kind if isinstance(o, fx.Node) and o in states else CONST
    if not isinstance(_example(o), torch.Tensor) and st != CONST:
        raise NoVariant(f"output {getattr(o, 'name', o)} is not a tensor")
    return {ROWS: "rows", REDUCED: "scalar", CONST: "const"}[st]


def _rewrite(gm, old: fx.Node, env: dict, states: dict) -> None:
    st = states.get(old)
    if st is None or st.kind == CONST or old.op == "placeholder":
        return
    new = env[old]
    name = _op_name(old)
    if st.kind == ROWS:
        _batch_free_shape(old, new, states)
    elif name in _VIEWS_TO_SCALAR and old.op != "call_module":
        _view_per_row(old, new)
    elif _origin_reduction(old, states):
        _per_row_reduction(old, new)
    elif name in ("getitem", "__getitem__") and _src_kind(old, states) == ROWS:
        _index_per_row(old, new)
    else:
        _check_scalar_op(gm, old, states)


def _src_kind(old: fx.Node, states: dict) -> str:
    src = old.args[0] if old.args else None
    return states[src].kind if isinstance(src, fx.Node) and src in states else CONST


def _view_per_row(old: fx.Node, new: fx.Node) -> None:
    """A reshape to one sample's value (`g.reshape(())`, `h.view(-1)` of one row): the
    same per row, `reshape(-1, *shape)` (each row holds that sample's elements)."""
    ex, src = _example(old), _example(old.args[0]) if old.args else None
    if not isinstance(ex, torch.Tensor) or not isinstance(src, torch.Tensor) or (
            ex.numel() != src.numel()) or _has_node(old.args[1:], old.kwargs):
        raise NoVariant(f"{_where(old)}: not a reshape of one sample's elements to a "
                        "shape of its own")
    new.target, new.op = torch.reshape, "call_function"
    new.args, new.kwargs = (new.args[0], (-1, *ex.shape)), {}


def _index_per_row(old: fx.Node, new: fx.Node) -> None:
    """`x[0]` / `x[0, i]` of one row: `x[:]` / `x[:, i]` per row."""
    index = old.args[1] if len(old.args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    if not items or items[0] not in (0, -1) or isinstance(items[0], bool) or any(
            isinstance(i, fx.Node) for i in items):
        raise NoVariant(f"{_where(old)}: an index of the batch dim not taken per row")
    rest = (slice(None), *items[1:])
    new.args = (new.args[0], rest if isinstance(index, tuple) else slice(None))


def _batch_free_shape(old: fx.Node, new: fx.Node, states: dict) -> None:
    """`x.view(1, 64)` on rows -> `x.view(-1, 64)`; `expand(1, ...)` -> `expand(-1, ...)`."""
    name = _op_name(old)
    ex = _example(old)
    if name in _RESHAPES and isinstance(ex, torch.Tensor) and ex.dim() and not _has_node(
            old.args[1:], old.kwargs) and "shape" not in old.kwargs:
        shape = (-1, *ex.shape[1:])
        new.args = (new.args[0], shape) if old.op == "call_function" else (new.args[0], *shape)
    elif name in _NEW and old.op == "call_method" and len(old.args) > 1:
        _new_per_row(old, new, states)
    elif name == "expand" and len(old.args) > 1:
        sizes = old.args[1] if isinstance(old.args[1], (tuple, list)) else old.args[1:]
        if not isinstance(sizes[0], fx.Node):
            new.args = (new.args[0], -1, *sizes[1:])


def _has_node(*args) -> bool:
    """Whether a value computed in the region (not a literal) is among `args`: a shape
    that may differ between calls, never replaced by the example's."""
    found: list = []
    fx.node.map_arg(args, found.append)
    return bool(found)


def _new_per_row(old: fx.Node, new: fx.Node, states: dict) -> None:
    """`t.new_zeros(1, 32)` of a rows `t`: `t.new_zeros(t.size(0), 32)`."""
    sized = isinstance(old.args[1], (tuple, list))
    sizes = list(old.args[1] if sized else old.args[1:])
    if old.op != "call_method" or not sizes or sizes[0] != 1 or _src_kind(old, states) != ROWS:
        return  # left as it is: `check_torch` refuses it if dim 0 is not the batch
    g = new.graph
    with g.inserting_before(new):
        size = g.call_method("size", (new.args[0], 0))
    sizes[0] = size
    new.args = (new.args[0], tuple(sizes)) if sized else (new.args[0], *sizes)


def _origin_reduction(old: fx.Node, states: dict) -> bool:
    """A whole-tensor reduction of a rows value (`p.max()`), made per-sample here."""
    src = old.args[0] if old.args else None
    return (_op_name(old) in _PER_ROW and isinstance(src, fx.Node)
            and states.get(src) is not None and states[src].kind == ROWS)


def _per_row_reduction(old: fx.Node, new: fx.Node) -> None:
    name = _op_name(old)
    fn, keep = _PER_ROW[name]
    if len(old.args) != 1 or set(old.kwargs) - keep:
        raise NoVariant(f"{_where(old)}: a {name} with arguments "
                        f"{list(old.args[1:]) + list(old.kwargs)} is not reduced per row here")
    ex, src = _example(old), _example(old.args[0])
    if not isinstance(ex, torch.Tensor) or ex.dim() != 0 or not isinstance(
            src, torch.Tensor) or not src.numel():
        raise NoVariant(f"{_where(old)}: not a reduction to one scalar")
    g = new.graph
    with g.inserting_before(new):  # one row per sample: its elements, row by row
        flat = g.call_function(torch.flatten, (new.args[0], 1)) if src.dim() > 1 else \
            g.call_function(torch.reshape, (new.args[0], (-1, 1)))
        red = g.call_function(fn, (flat,), {"dim": 1, **dict(new.kwargs)})
    red.meta = dict(new.meta)
    new.replace_all_uses_with(red)
    g.erase_node(new)


def _check_scalar_op(gm, old: fx.Node, states: dict) -> None:
    """Work on per-sample scalars: elementwise, each scalar argument of the result's rank
    and every other tensor of at most that rank, so that broadcasting against the
    variant's leading batch dim lines up row by row."""
    ok = (old.op == "call_module" and isinstance(gm.get_submodule(old.target), _SCALAR_MODULES)
          ) or (old.op != "call_module" and _op_name(old) in _SCALAR_OPS)
    out = _example(old)
    if not ok or not isinstance(out, torch.Tensor):
        raise NoVariant(f"{_where(old)}: not per-row work on the per-sample scalar made at "
                        f"{states[old].origin}")
    bad: list = []

    def check(a: fx.Node) -> None:
        ex = _example(a)
        if not isinstance(ex, torch.Tensor):
            return
        kind = states.get(a).kind if a in states else CONST
        if (kind == REDUCED and ex.dim() != out.dim()) or ex.dim() > out.dim():
            bad.append(a.name)

    fx.node.map_arg((old.args, old.kwargs), check)
    if bad:
        raise NoVariant(f"{_where(old)}: broadcasts {bad[0]} against the per-sample scalar "
                        f"made at {states[old].origin}")


# -- checks ---------------------------------------------------------------------------------
def sample_rows(gm, kinds: dict, n: int, seed: int = 0) -> list[tuple]:
    """`n` inputs of one sample each: the example, and copies with float rows perturbed."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        args = []
        for p, kind in zip(_placeholders(gm), kinds["inputs"]):
            ex = _example(p)
            if kind == "rows" and i and ex.is_floating_point():
                scale = float(ex.float().std()) if ex.numel() > 1 else 1.0
                ex = ex + (0.05 * i * (scale or 1.0)) * torch.randn(
                    ex.shape, generator=gen, dtype=ex.dtype)
            args.append(ex)
        rows.append(tuple(args))
    return rows


def joined(rows: list[tuple], kinds: dict) -> tuple:
    return tuple(torch.cat([r[k] for r in rows]) if kind == "rows" else rows[0][k]
                 for k, kind in enumerate(kinds["inputs"]))


def check_torch(gm, variant, kinds: dict, rows: list[tuple], refs: list) -> None:
    """Every value of the variant at batch len(rows) has the shape its state implies, and
    its outputs equal the original's per row; NoVariant otherwise."""
    b = len(rows)
    with torch.no_grad():
        values = _run_recorded(variant, joined(rows, kinds))
    for node, v in values.items():
        ex = node.meta.get("example")
        st = node.meta.get("dycomp_rows")
        if st is None or not isinstance(ex, torch.Tensor) or not isinstance(v, torch.Tensor):
            continue
        want = {ROWS: (b, *ex.shape[1:]), REDUCED: (b, *ex.shape), CONST: tuple(ex.shape)}[st]
        if tuple(v.shape) != want:
            raise NoVariant(f"{_where(node)}: shape {list(v.shape)} at batch {b}, expected "
                            f"{list(want)}: dim 0 is not the sample there")
    out = next(n for n in variant.graph.nodes if n.op == "output").args[0]
    compare([values[o] if isinstance(o, fx.Node) else o for o in out], refs, kinds, "torch")


def _run_recorded(gm, args) -> dict:
    values: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            values[n] = super().run_node(n)
            return values[n]

    Recorder(gm).run(*args)
    return values


def compare(outs: list, refs: list, kinds: dict, where: str) -> None:
    """`outs` (batch of len(refs)) against the per-row references; NoVariant if any
    row differs."""
    for j, kind in enumerate(kinds["outputs"]):
        got = _np(outs[j])
        for i, ref in enumerate(refs):
            want = _np(ref[j])
            row = got[i:i + 1] if kind == "rows" else got[i, ...] if kind == "scalar" else got
            if row.shape != want.shape or not _close(row, want):
                raise NoVariant(f"{where}: output {j} of row {i} differs from the region run "
                                "on that row alone")


def _np(v) -> np.ndarray:
    return v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        return np.allclose(a, b, rtol=_TOL, atol=_TOL, equal_nan=True)
    return np.array_equal(a, b)


def references(gm, rows: list[tuple]) -> list[tuple]:
    """The original region's outputs, run on each row alone."""
    refs = []
    with torch.no_grad():
        for args in rows:
            out = gm(*args)
            refs.append(tuple(out) if isinstance(out, (tuple, list)) else (out,))
    return refs
