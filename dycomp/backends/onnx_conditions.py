"""Reshapes nothing needs (passes on ONNX graphs).

`t.item() > c` becomes `Reshape(t, []) > c` in a region: the host needs a 0-d value.
When the comparison only decides (it feeds `If` conditions and the condition a `Loop`
body ends with, through `Not`, `And`, `Or`), ONNX Runtime takes its `[1, 1]` result as
well, so the `Reshape` goes (`drop_condition_reshapes`): one node less per decision,
per iteration inside a `Loop` body (act: 3 % faster).

A `Reshape` to the shape its input already has (`torch.where(c.reshape(()), ...)` on a
0-d `c`, `float(t.max())` of a 0-d max) is a node ONNX Runtime runs all the same:
`drop_noop_reshapes` reads the input instead (nested_if: 3 of them, ~0.7 us each here).
"""

from __future__ import annotations

import math

import onnx

from dycomp.runtime.onnx_layout import static_shapes
from dycomp.runtime.onnx_paths import constant, constant_tensor, reads

_GRAPH = onnx.AttributeProto.GRAPH
_COMPARE = {"Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"}
_LOGIC = {"Not", "And", "Or", "Xor"}


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
        return name not in hidden and all(  # (a Loop's first condition must be 0-d)
            (n.op_type == "If" and i == 0) or (n.op_type in _LOGIC and decides(n.output[0]))
            for n, i in readers.get(name, []))

    for r in g.node:
        if r.op_type != "Reshape" or small.get(r.input[1]) != (0,):  # not to 0-d
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
    consts = {**outer, **{t.name: t for t in g.initializer},
              **{n.output[0]: n for n in g.node if constant_tensor(n) is not None}}
    kept, done, hidden = [], 0, {o.name for o in g.output}
    for n in g.node:
        n.input[:] = [renamed.get(x, x) for x in n.input]
        for a in n.attribute:
            if a.type == _GRAPH:
                done += _drop_noop(a.g, {} if n.op_type == "Loop" else shapes, consts,
                                  dict(renamed))
        target = constant(consts[n.input[1]]) if n.op_type == "Reshape" and \
            n.input[1] in consts else None
        if (target is not None and n.output[0] not in hidden and (target > 0).all()
                and shapes.get(n.input[0]) == tuple(target.tolist())):
            renamed[n.output[0]] = n.input[0]
            done += 1
            continue
        kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    return done
