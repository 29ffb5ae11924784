"""Reshapes nothing needs (passes on ONNX graphs).

`t.item() > c` becomes `Reshape(t, []) > c` in a region: the host needs a 0-d value.
When the comparison only decides (it feeds `If` conditions, the condition a `Loop`
starts with and the one its body ends with, through `Not`, `And`, `Or`), ONNX Runtime
takes its `[1, 1]` result as well, so the `Reshape` goes (`drop_condition_reshapes`):
one node less per decision, per iteration inside a `Loop` body (act: 3 % faster).

A `Reshape` to the shape its input already has (`torch.where(c.reshape(()), ...)` on a
0-d `c`, `float(t.max())` of a 0-d max) is a node ONNX Runtime runs all the same:
`drop_noop_reshapes` reads the input instead (nested_if: 3 of them, ~0.7 us each here).

A `Loop` that carries a value its body only reads through one `Unsqueeze` and ends by
`Squeeze`-ing the same axes (a fused GRU step's state: `GRU` takes and gives it 3-d, the
rest of the body reads it 2-d) carries it unsqueezed instead (`carry_unsqueezed`): the
body's `Unsqueeze` goes, one node less per iteration; what the loop starts from and
ends with is unsqueezed and squeezed once outside it, where nothing has it already.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dycomp.runtime.onnx_layout import static_shapes
from dycomp.runtime.onnx_paths import constant, constant_tensor, definitions, node_reads, reads

_GRAPH = onnx.AttributeProto.GRAPH
_COMPARE = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"}
_LOGIC = {"Not", "And", "Or", "Xor"}

# the name of a decision's marker node (an `Identity` in check-only builds, read through
# like logic: `onnx_build.Builder.mark`) starts so
MARK = "dycomp_force"
GUARDS = "dycomp_guards"  # model property: marker -> [(condition, arm)] (`Builder.guard`)


def drop_condition_reshapes(g: onnx.GraphProto, outer: dict | None = None,
                            loop_body: bool = False) -> int:
    """Compare one-element values as they are where only conditions read the result, in
    `g` and its subgraphs; returns how many reshapes were bypassed. `outer`: the small
    constants of the enclosing graphs; `loop_body`: `g` is a `Loop` body, whose first
    output is its condition."""
    small = {**(outer or {}), **_small_constants(g)}
    done = sum(drop_condition_reshapes(a.g, small, n.op_type == "Loop")
               for n in g.node for a in n.attribute if a.type == _GRAPH)
    readers: dict[str, list] = {}
    for n in g.node:
        for i, x in enumerate(n.input):
            readers.setdefault(x, []).append((n, i))
    hidden = {o.name for o in g.output[int(loop_body):]} | {
        x for n in g.node for a in n.attribute if a.type == _GRAPH for x in reads(a.g)}

    def decides(name: str) -> bool:
        """Only conditions read `name` (or logic deciding only conditions)."""
        return name not in hidden and all(  # an If's condition, a Loop's first one
            (n.op_type, i) in (("If", 0), ("Loop", 1))
            or ((n.op_type in _LOGIC or n.name.startswith(MARK) or _to_0d(n, small))
                and decides(n.output[0]))
            for n, i in readers.get(name, []))

    for r in g.node:
        if not _to_0d(r, small):
            continue
        users = readers.get(r.output[0], [])
        if r.output[0] in hidden or not users or not all(
                n.op_type in _COMPARE and len(n.input) == 2
                and math.prod(small.get(n.input[1 - i], (2,))) == 1 and decides(n.output[0])
                for n, i in users):
            continue
        for n, i in users:
            n.input[i] = r.input[0]
        done += 1
    return done


def _to_0d(n: onnx.NodeProto, small: dict) -> bool:
    """A `Reshape` to 0-d (what a `Loop`'s starting condition goes through)."""
    return n.op_type == "Reshape" and small.get(n.input[1]) == (0,)


def _small_constants(g) -> dict[str, tuple]:
    """Initializers and `Constant`s of `g` with at most one element -> their shapes."""
    out = {t.name: tuple(t.dims) for t in g.initializer}
    out.update((n.output[0], tuple(t.dims)) for n in g.node
               if (t := constant_tensor(n)) is not None)
    return {k: v for k, v in out.items() if math.prod(v) <= 1}


def drop_noop_reshapes(model: onnx.ModelProto) -> int:
    """Read `x` instead of `Reshape(x, s)` where shape inference pins `x`'s shape to the
    constant `s`, in the model and its `If` arms (not in `Loop` bodies, where a carried
    value's shape may change from one iteration to the next); returns how many."""
    return _drop_noop(model.graph, static_shapes(model), {}, {})


def _drop_noop(g: onnx.GraphProto, shapes: dict, outer: dict, renamed: dict) -> int:
    defs = definitions(g, outer)
    kept, done, hidden = [], 0, {o.name for o in g.output}
    # a `Loop`'s starting condition keeps its 0-d reshape: ONNX Runtime reads the body's
    # condition rank from it, and its own inference may not know what ONNX's does
    hidden |= {n.input[1] for n in g.node if n.op_type == "Loop" and len(n.input) > 1}
    for n in g.node:
        n.input[:] = [renamed.get(x, x) for x in n.input]
        for a in n.attribute:
            if a.type == _GRAPH:
                done += _drop_noop(a.g, {} if n.op_type == "Loop" else shapes, defs,
                                  dict(renamed))
        target = constant(defs.get(n.input[1])) if n.op_type == "Reshape" else None
        if (target is not None and n.output[0] not in hidden and (target > 0).all()
                and shapes.get(n.input[0]) == tuple(target.tolist())):
            renamed[n.output[0]] = n.input[0]
            done += 1
            continue
        kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    return done


def carry_unsqueezed(g: onnx.GraphProto, outer: dict | None = None) -> int:
    """Carry values `Loop` bodies only unsqueeze as their unsqueezed form, in `g` and its
    subgraphs (see the module docstring); returns how many. `outer`: the definitions of
    the enclosing graphs."""
    scope = definitions(g, outer or {})
    done = sum(carry_unsqueezed(a.g, scope) for n in g.node for a in n.attribute
               if a.type == _GRAPH)
    nodes = []
    for n in g.node:
        before, after = [], []
        if n.op_type == "Loop":
            body = next(a.g for a in n.attribute if a.name == "body")
            for k in range(len(n.input) - 2):
                carried = _carried(body, k, definitions(body, scope))
                if carried is not None:
                    _carry(g, n, body, k, *carried, scope, before, after)
                    done += 1
        nodes += [*before, n, *after]
    del g.node[:]
    g.node.extend(nodes)
    return done


def _axes(node, scope) -> tuple | None:
    """The constant axes of an `Unsqueeze` / `Squeeze` (opset 13 or later)."""
    if len(node.input) != 2 or node.input[1] not in scope:
        return None
    axes = constant(scope[node.input[1]])
    return None if axes is None else tuple(axes.reshape(-1).tolist())


def _carried(body, k: int, scope) -> tuple | None:
    """(the `Unsqueeze`, the `Squeeze`, their axes) where a `Loop` body reads its carried
    value `k` only to unsqueeze it and squeezes the value it carries on by the same
    axes; else None."""
    name, end = body.input[2 + k].name, scope.get(body.output[1 + k].name)
    readers = [n for n in body.node if name in node_reads(n)]
    outputs = {o.name for o in body.output}
    if (len(readers) != 1 or readers[0].op_type != "Unsqueeze" or name in outputs
            or not isinstance(end, onnx.NodeProto) or end.op_type != "Squeeze"
            or end.input[0] in outputs):
        return None
    unsqueezed = readers[0].output[0]  # read as a node input only: renamed there
    if unsqueezed in outputs or any(unsqueezed in node_reads(n) - set(n.input)
                                    for n in body.node):
        return None
    axes = _axes(readers[0], scope)
    return (readers[0], end, axes) if axes is not None and axes == _axes(end, scope) \
        else None


def _carry(g, loop, body, k: int, unsqueeze, squeeze, axes: tuple, scope, before: list,
           after: list) -> None:
    """Carry value `k` of `loop` unsqueezed by `axes` (its body's `unsqueeze` goes, its
    `squeeze` no longer ends the value), adding to the nodes that go `before` and `after`
    the loop."""
    name, final = body.input[2 + k].name, loop.output[k]
    for n in body.node:  # the body reads the carried value where it read it unsqueezed
        n.input[:] = [name if x == unsqueeze.output[0] else x for x in n.input]
    body.node.remove(unsqueeze)
    body.output[1 + k].name = squeeze.input[0]
    for vi in (body.input[2 + k], body.output[1 + k]):
        vi.type.tensor_type.ClearField("shape")
    axes_name = f"{final}__carry_axes"
    g.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
    start = scope.get(loop.input[2 + k])
    if isinstance(start, onnx.NodeProto) and start.op_type == "Squeeze" and \
            _axes(start, scope) == axes:
        loop.input[2 + k] = start.input[0]  # the value it squeezed is unsqueezed already
    else:
        before.append(helper.make_node("Unsqueeze", [loop.input[2 + k], axes_name],
                                       [f"{final}__carry_start"]))
        loop.input[2 + k] = f"{final}__carry_start"
    loop.output[k] = f"{final}__carry_end"
    after.append(helper.make_node("Squeeze", [loop.output[k], axes_name], [final]))

