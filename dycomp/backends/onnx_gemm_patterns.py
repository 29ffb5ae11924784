"""The patterns of `onnx_gemm_sums` (its docstring says what they do and why each is
exact) as `onnxscript.rewriter` rules on `onnx_ir`: the library matches them in every
subgraph, either way round for `Add`, and replaces a match only where nothing outside it
reads a value it drops; the conditions here check constants, attributes and the static
shapes. Imported only for models that have a sum after a `Gemm`."""

from __future__ import annotations

import contextvars
import functools

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern

_SHAPES: contextvars.ContextVar[dict] = contextvars.ContextVar("shapes")


def rewrite(model: onnx.ModelProto, shapes: dict) -> int:
    """Apply the rules to `model` in place (`shapes`: `static_shapes(model)`); returns
    how many matches were rewritten."""
    ir_model = ir.serde.deserialize_model(model)
    token = _SHAPES.set(shapes)
    try:
        done = _rules().apply_to_model(ir_model)
    finally:
        _SHAPES.reset(token)
    if done:
        model.CopyFrom(ir.serde.serialize_model(ir_model))
    return done


@functools.cache
def _rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([
        pattern.RewriteRule(_gathered, _gathered_gemm, _gathered_ok),
        pattern.RewriteRule(_relu_block, _block_gemm, _residual_ok),
        pattern.RewriteRule(_linear_block, _block_gemm, _residual_ok),
        pattern.RewriteRule(_unbiased, _unbiased_gemm, _residual_ok)], commute=True)


def _fits(y: ir.Value, fc2: ir.Value, **_) -> bool:
    """The `Gemm`'s result has a static 2-d shape, the sum's (the other addend broadcasts
    to it, as `C` must)."""
    shape = _SHAPES.get().get(fc2.name)
    return shape is not None and len(shape) == 2 and _SHAPES.get().get(y.name) == shape


def _gathered_ok(context, index, row, fc2, **kw) -> bool:
    """The table and bias are constant and the gathered rows broadcast to the result."""
    shapes, rows = _SHAPES.get(), _rows(row, fc2)
    try:
        return _fits(fc2=fc2, **kw) and rows is not None and np.broadcast_shapes(
            shapes[index.name] + rows.shape[1:], shapes[fc2.name]) == shapes[fc2.name]
    except (KeyError, ValueError):
        return False


def _residual_ok(context, x, fc2, **kw) -> bool:
    """Plain `Gemm`s; where fc1 gets the extra unit, it reads a never-infinite value. `x`
    is not computed by the block itself (`relu(a) + fc2(relu(a))`: the match goes)."""
    return x.producer() not in context.nodes and _fits(fc2=fc2, **kw) and \
        _plain(fc2.producer()) and (
        "fc1" not in kw or _plain(kw["fc1"].producer()) and _finite(kw["h"]))


def _gemm(op, a, w, *more, out: str):
    return op.Gemm(a, w, *more, _allow_other_attributes=True, _outputs=[out])


def _gathered(op, a, w, table, index):
    """fc(a) + table[index] (fc with or without bias)."""
    fc2 = op.Gemm(a, w, _allow_other_inputs=True, _allow_other_attributes=True,
                  _outputs=["fc2"])
    return op.Add(fc2, op.Gather(table, index, _allow_other_attributes=True,
                                 _outputs=["row"]), _outputs=["y"])


def _gathered_gemm(op, a, w, index, row, fc2, **_):
    """Gemm(a, w, C=(table + bias)[index])."""
    rows = op.initializer(ir.tensor(_rows(row, fc2), name=f"{row.name}__sum_rows"))
    return op.Gemm(a, w, op.Gather(rows, index),
                   transB=_attr(fc2.producer(), "transB", 0))


def _relu_block(op, x, h, w1, w2, b2):
    """x + fc2(relu(fc1(h))), fc2 with bias."""
    fc1 = op.Gemm(h, w1, _allow_other_inputs=True, _allow_other_attributes=True,
                  _outputs=["fc1"])
    return op.Add(x, _gemm(op, op.Relu(fc1), w2, b2, out="fc2"), _outputs=["y"])


def _linear_block(op, x, h, w1, w2, b2):
    """x + fc2(fc1(h)), fc2 with bias."""
    fc1 = op.Gemm(h, w1, _allow_other_inputs=True, _allow_other_attributes=True,
                  _outputs=["fc1"])
    return op.Add(x, _gemm(op, fc1, w2, b2, out="fc2"), _outputs=["y"])


def _block_gemm(op, x, h, fc1, fc2, **_):
    """fc1 one unit more (zero weights, bias 1: relu(1) == 1) whose output weights in fc2
    are fc2's bias; x as fc2's C."""
    w1, w2 = _weights(fc1.producer()), _weights(fc2.producer())
    b1 = np.concatenate([_bias(fc1.producer(), w1.shape[0]), np.ones(1, w1.dtype)])
    w1 = np.concatenate([w1, np.zeros((1, w1.shape[1]), w1.dtype)])
    w2 = np.concatenate([w2, _bias(fc2.producer(), w2.shape[0])[:, None]], 1)
    mid = op.Gemm(h, _tensor(op, w1, fc1, "w"), _tensor(op, b1, fc1, "b"), transB=1)
    if fc2.producer().inputs[0].producer().op_type == "Relu":
        mid = op.Relu(mid)
    return op.Gemm(mid, _tensor(op, w2, fc2, "w"), x, transB=1)


def _unbiased(op, x, a, w2):
    """x + fc2(a), fc2 without bias."""
    return op.Add(x, _gemm(op, a, w2, out="fc2"), _outputs=["y"])


def _unbiased_gemm(op, x, a, fc2, **_):
    return op.Gemm(a, _tensor(op, _weights(fc2.producer()), fc2, "w"), x, transB=1)


def _finite(name: ir.Value) -> bool:
    """Whether `name` is never +-inf: a `LayerNormalization` of constant scale and bias
    (each value within sqrt(n) of its row's mean scaled, or NaN). The extra unit's zero
    weights times an infinity are NaN, where the original `relu` may give 0."""
    n = name.producer()
    if n is None or n.op_type != "LayerNormalization" or n.domain:
        return False
    scale = _constant(n.inputs[1])
    bias = _constant(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else \
        np.zeros(1, np.float32)
    if scale is None or bias is None or scale.size == 0:
        return False
    with np.errstate(all="ignore"):
        top = np.abs(scale).max() * np.sqrt(scale.size) + np.abs(bias).max()
    return bool(np.isfinite(top) and top < 1e37)


def _rows(row: ir.Value, fc: ir.Value) -> np.ndarray | None:
    """The gathered table plus the `Gemm`'s bias, when both are constant (axis 0)."""
    gather = row.producer()
    if _attr(gather, "axis", 0) != 0 or not _plain(fc.producer()):
        return None
    table, bias = _constant(gather.inputs[0]), _bias(fc.producer())
    if table is None or table.dtype != np.float32 or table.ndim == 0:
        return None
    return np.array([t + (0 if bias is None else bias) for t in table], np.float32)


def _plain(n: ir.Node) -> bool:
    """A float `Gemm` of constant weights and 1-d bias (or none), A not transposed,
    alpha and beta 1."""
    if _attr(n, "transA", 0) or _attr(n, "alpha", 1.0) != 1.0 or \
            _attr(n, "beta", 1.0) != 1.0:
        return False
    w, b = _constant(n.inputs[1]), _bias(n)
    has_bias = len(n.inputs) > 2 and n.inputs[2] is not None
    return w is not None and w.dtype == np.float32 and (
        not has_bias or b is not None and b.ndim <= 1)


def _weights(n: ir.Node) -> np.ndarray:
    """A `Gemm`'s weights as (outputs, inputs)."""
    w = _constant(n.inputs[1])
    return w if _attr(n, "transB", 0) else w.T


def _bias(n: ir.Node, units: int | None = None) -> np.ndarray | None:
    """A `Gemm`'s constant bias (None: none, or not constant); with `units`, as a vector
    of that many (zeros for none)."""
    b = _constant(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
    if units is None:
        return b
    return np.broadcast_to(np.zeros(1, np.float32) if b is None else b, (units,))


def _constant(v: ir.Value | None) -> np.ndarray | None:
    t = None if v is None else ir.convenience.get_const_tensor(v)
    return None if t is None else t.numpy()


def _attr(n: ir.Node, name: str, default):
    a = n.attributes.get(name)
    return default if a is None else a.value


def _tensor(op, value: np.ndarray, n: ir.Value, tag: str) -> ir.Value:
    name = f"{n.name}__sum_{tag}"
    return op.initializer(ir.tensor(np.ascontiguousarray(value), name=name), name)
