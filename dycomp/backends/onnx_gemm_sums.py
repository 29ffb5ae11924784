"""Sums after a `Gemm` into its `C` input (a pass on ONNX graphs).

ONNX Runtime fuses a `Gemm` with the activation after it, never with a sum after it, so
`x + fc(h)` costs an `Add` node of its own. `Gemm` adds a third input, `C`, itself, but
that is where `fc`'s bias goes. `fold_sums_into_gemms` moves the bias elsewhere, two
ways:

- **a residual MLP**, `x + fc2(relu(fc1(h)))`: `fc1` gets one more output unit, with
  zero weights and bias 1, so that `relu` gives 1 there, and `fc2` one more input column
  holding its bias; `x` becomes `fc2`'s `C`. The same with no activation between the two
  `Gemm`s; a `fc2` without bias needs no extra unit. Other activations are left alone:
  only `relu(1)` is exactly 1. gated54 (54 such blocks, each in an `If` arm) 3 % faster.
  The extra unit is `relu(0 * h + 1)`: NaN where `h` holds an infinity, where the
  original may be finite (`relu(-inf) == 0`), so `fc1` must read a value that is never
  infinite, a `LayerNormalization` (gated54's blocks); `fc2` without bias needs none.
- **a gathered constant**, `fc(h) + table[i]`: the bias is added to every row of the
  table once, and the gathered row becomes `C`. act (`halt(h) + step_bias[n]` in its
  loop body) 4 % faster: a node less per iteration.

A sum that would broadcast the `Gemm`'s result to another shape stays (the shapes are
ONNX shape inference's: `onnx_layout.static_shapes`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dycomp.runtime.onnx_layout import static_shapes
from dycomp.runtime.onnx_paths import constant, definitions, reader_counts

_GRAPH = onnx.AttributeProto.GRAPH


def fold_sums_into_gemms(model: onnx.ModelProto, shapes: dict | None = None) -> int:
    """Rewrite every such sum of `model` (subgraphs included); returns how many.
    `shapes`: `static_shapes(model)`, when the caller has it."""
    return _fold(model.graph, static_shapes(model) if shapes is None else shapes)


def _fold(g: onnx.GraphProto, shapes: dict) -> int:
    done = sum(_fold(a.g, shapes) for n in g.node for a in n.attribute if a.type == _GRAPH)
    while (rewrite := _first(g, shapes)) is not None:
        replace, inits = rewrite
        g.initializer.extend(inits)
        kept = [replace.get(tuple(n.output), n) for n in g.node]
        del g.node[:]
        g.node.extend(n for n in kept if n is not None)
        done += 1
    return done


def _first(g, shapes):
    """The first rewrite of `g`, as (node outputs -> the node replacing that node, or
    None to drop it; new initializers), or None."""
    scope, readers = definitions(g, {}), reader_counts(g)

    def single(name, op):  # the node of `g` that makes `name` for one reader, if it is `op`
        n = scope.get(name)
        return n if isinstance(n, onnx.NodeProto) and n.op_type == op \
            and readers.get(name) == 1 else None

    for add in g.node:
        if add.op_type != "Add" or len(set(add.input)) != 2:
            continue
        for k in (0, 1):
            fc = single(add.input[k], "Gemm")
            if fc is None or not _plain(fc, scope) or not _same_2d(shapes, add, fc):
                continue
            other = add.input[1 - k]
            rewrite = _gathered(scope, shapes, add, fc, single(other, "Gather")) or \
                _residual(scope, add, fc, other, single)
            if rewrite is not None:
                return rewrite
    return None


def _residual(scope, add, fc2, x, single):
    """`x + fc2(relu(fc1(h)))` -> `Gemm(relu(fc1'(h)), w2', C=x)`, fc1' one unit more
    (when `fc2` has a bias)."""
    sum_gemm = helper.make_node("Gemm", [fc2.input[0], "", x], list(add.output),
                                name=add.name or fc2.name, transB=1)
    replace = {tuple(fc2.output): None, tuple(add.output): sum_gemm}
    w2 = _weights(fc2, scope)
    if _bias(fc2, scope) is not None:
        act = single(fc2.input[0], "Relu")
        fc1 = single(act.input[0] if act else fc2.input[0], "Gemm")
        if fc1 is None or not _plain(fc1, scope) or not _finite(fc1.input[0], scope):
            return None
        w1 = _weights(fc1, scope)  # one more unit: zero weights, bias 1 (relu(1) == 1)
        b1 = np.concatenate([_bias(fc1, scope, w1.shape[0]), np.ones(1, w1.dtype)])
        w1 = np.concatenate([w1, np.zeros((1, w1.shape[1]), w1.dtype)])
        w2 = np.concatenate([w2, _bias(fc2, scope, w2.shape[0])[:, None]], 1)
        replace[tuple(fc1.output)] = helper.make_node(
            "Gemm", [fc1.input[0], _name(fc1, "w"), _name(fc1, "b")], list(fc1.output),
            name=fc1.name, transB=1)
        inits = [_tensor(w1, fc1, "w"), _tensor(b1, fc1, "b")]
    else:
        inits = []
    sum_gemm.input[1] = _name(fc2, "w")
    return replace, inits + [_tensor(w2, fc2, "w")]


def _finite(name: str, scope: dict) -> bool:
    """Whether `name` is never +-inf: a `LayerNormalization` of constant scale and bias
    (each value within sqrt(n) of its row's mean scaled, or NaN). The extra unit's zero
    weights times an infinity are NaN, where the original `relu` may give 0."""
    n = scope.get(name)
    if not isinstance(n, onnx.NodeProto) or n.op_type != "LayerNormalization":
        return False
    scale = constant(scope.get(n.input[1]))
    bias = constant(scope.get(n.input[2])) if len(n.input) > 2 and n.input[2] else \
        np.zeros(1, np.float32)
    if scale is None or bias is None or scale.size == 0:
        return False
    with np.errstate(all="ignore"):
        top = np.abs(scale).max() * np.sqrt(scale.size) + np.abs(bias).max()
    return bool(np.isfinite(top) and top < 1e37)


def _gathered(scope, shapes, add, fc, gather):
    """`fc(h) + table[i]` -> `Gemm(h, w, C=(table + bias)[i])`, when `table` is constant
    and the gathered rows broadcast to the `Gemm`'s result."""
    if gather is None or any(a.name == "axis" and a.i != 0 for a in gather.attribute):
        return None
    table, index = constant(scope.get(gather.input[0])), shapes.get(gather.input[1])
    if table is None or table.dtype != np.float32 or table.ndim == 0 or index is None:
        return None
    bias = _bias(fc, scope)
    rows = np.array([t + (0 if bias is None else bias) for t in table], np.float32)
    try:
        fits = np.broadcast_shapes(index + rows.shape[1:], shapes[fc.output[0]]) \
            == shapes[fc.output[0]]
    except ValueError:
        fits = False
    if not fits:
        return None
    attrs = [a for a in fc.attribute if a.name == "transB"]
    gemm = helper.make_node("Gemm", [fc.input[0], fc.input[1], gather.output[0]],
                            list(add.output), name=add.name or fc.name)
    gemm.attribute.extend(attrs)
    rows_gather = helper.make_node("Gather", [_name(gather, "rows"), gather.input[1]],
                                   list(gather.output), name=gather.name)
    return ({tuple(fc.output): None, tuple(add.output): gemm,
             tuple(gather.output): rows_gather}, [_tensor(rows, gather, "rows")])


def _same_2d(shapes: dict, add, fc) -> bool:
    """Whether the sum has the `Gemm`'s result's static 2-d shape (the other addend
    broadcasts to it, as `C` must)."""
    shape = shapes.get(fc.output[0])
    return shape is not None and len(shape) == 2 and shapes.get(add.output[0]) == shape


def _plain(n: onnx.NodeProto, scope: dict) -> bool:
    """A float `Gemm` of constant weights and 1-d bias (or none), A not transposed,
    alpha and beta 1."""
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        return False
    w = constant(scope.get(n.input[1]))
    b = _bias(n, scope)
    has_bias = len(n.input) > 2 and n.input[2]
    return w is not None and w.dtype == np.float32 and (
        not has_bias or b is not None and b.ndim <= 1)


def _weights(n, scope) -> np.ndarray:
    """A `Gemm`'s weights as (outputs, inputs)."""
    w = constant(scope[n.input[1]])
    transposed = any(a.name == "transB" and a.i for a in n.attribute)
    return w if transposed else w.T


def _bias(n, scope, units: int | None = None) -> np.ndarray | None:
    """A `Gemm`'s constant bias (None: none, or not constant); with `units`, as a vector
    of that many (zeros for none)."""
    b = constant(scope.get(n.input[2])) if len(n.input) > 2 and n.input[2] else None
    if units is None:
        return b
    return np.broadcast_to(np.zeros(1, np.float32) if b is None else b, (units,))


def _name(n, tag: str) -> str:
    return f"{n.output[0]}__sum_{tag}"


def _tensor(value: np.ndarray, n, tag: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), _name(n, tag))
