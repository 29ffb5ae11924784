"""Which regions a fused subgraph ran (numpy + onnx only, never torch).

A fused subgraph (host branches and loops lowered into ONNX `If` / `Loop` nodes) is
saved in its *traced* form: one more output, `PATH_OUTPUT`, lists the ids of the regions
it ran, in order (each `If` returns the ids of the arm it took, each `Loop` carries
them from iteration to iteration). `drop_path` removes that output and every node, `If`
output and `Loop` carried value that only served it: the model that runs by default.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

PATH_OUTPUT = "dycomp_path"
_GRAPH = onnx.AttributeProto.GRAPH


def drop_path(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of traced `model` without its path output and what only it needed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    outs = [o for o in m.graph.output if o.name != PATH_OUTPUT]
    del m.graph.output[:]
    m.graph.output.extend(outs)
    drop_dead(m.graph)
    return m


def drop_dead(g: onnx.GraphProto) -> set:
    """Remove from `g` and its subgraphs every node, initializer, `If` output and `Loop`
    carried value that nothing reads; returns the names `g` reads (its nested graphs
    included)."""
    read = {o.name for o in g.output}
    kept = []
    for n in reversed(g.node):
        if n.op_type == "If":
            _drop_if_outputs(n, read)
        elif n.op_type == "Loop":
            _drop_carried(n, read)
        if not read.intersection(n.output):
            continue
        kept.append(n)
        read.update(n.input)
        for a in n.attribute:
            if a.type == _GRAPH:
                read |= drop_dead(a.g)
    del g.node[:]
    g.node.extend(reversed(kept))
    inits = [t for t in g.initializer if t.name in read]
    if len(inits) < len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(inits)
    return read


def _drop_if_outputs(n: onnx.NodeProto, read: set) -> None:
    arms = [a.g for a in n.attribute if a.type == _GRAPH]
    for i in reversed(range(len(n.output))):
        if n.output[i] not in read:
            del n.output[i]
            for arm in arms:
                del arm.output[i]


def _drop_carried(n: onnx.NodeProto, read: set) -> None:
    """Loop-carried values whose final value nothing reads and which only feed their own
    next value (inputs: M, cond, carried...; body outputs: cond, carried..., scans)."""
    (attr,) = (a for a in n.attribute if a.name == "body")
    for j in reversed(range(len(n.input) - 2)):
        if n.output[j] in read:
            continue
        body = onnx.GraphProto()
        body.CopyFrom(attr.g)
        del body.output[1 + j]
        if body.input[2 + j].name in drop_dead(body):
            continue  # read by the rest of the body: keep it
        del body.input[2 + j]
        attr.g.CopyFrom(body)
        del n.input[2 + j]
        del n.output[j]


def reads(g: onnx.GraphProto) -> set[str]:
    """Names `g` reads: its nodes' inputs (theirs subgraphs' reads included) and outputs."""
    names = {o.name for o in g.output}
    for n in g.node:
        names |= node_reads(n)
    return names


def node_reads(n: onnx.NodeProto) -> set[str]:
    """Names one node reads: its inputs, and what its subgraphs read."""
    names = set(n.input)
    for a in n.attribute:
        if a.type == _GRAPH:
            names |= reads(a.g)
    return names


def definitions(g: onnx.GraphProto, outer: dict) -> dict:
    """Name -> the initializer or the node that defines it, over `g` and the graphs
    enclosing it (`outer`, their `definitions`)."""
    names = dict(outer)
    names.update((t.name, t) for t in g.initializer)
    names.update((o, n) for n in g.node for o in n.output)
    return names


def reader_counts(g: onnx.GraphProto) -> dict[str, int]:
    """How many nodes of `g` (a node whose subgraphs read a name counts once) and graph
    outputs read each name."""
    count: dict[str, int] = {}
    for n in g.node:
        for name in node_reads(n):
            count[name] = count.get(name, 0) + 1
    for o in g.output:
        count[o.name] = count.get(o.name, 0) + 1
    return count


def constant_tensor(x) -> onnx.TensorProto | None:
    """The tensor of an initializer, or of a `Constant` node with a `value`; else None."""
    if isinstance(x, onnx.TensorProto):
        return x
    if isinstance(x, onnx.NodeProto) and x.op_type == "Constant" and len(x.attribute) == 1 \
            and x.attribute[0].name == "value":
        return x.attribute[0].t
    return None


def constant(x) -> np.ndarray | None:
    """`constant_tensor(x)` as an array."""
    t = constant_tensor(x)
    return None if t is None else numpy_helper.to_array(t)
