"""`Where` on booleans, which ONNX Runtime's CPU kernel does not implement.

`torch.where(c, a, b)` of two boolean tensors exports as an ONNX `Where` whose data are
`bool`; ONNX Runtime 1.32 has no CPU kernel for it ("Could not find an implementation
for Where(16)"), so a region holding one would not load. It arises from user code
(`torch.where(mask, p, q)` on masks) and from dycomp itself: a speculated branch
(`FuseAcrossDecisions`) or a fused `If` selects between its arms' boolean values. Each
such `Where` becomes `Cast(Where(c, Cast(a, uint8), Cast(b, uint8)), bool)`: exact, as
0 and 1 survive both casts.
"""

from __future__ import annotations

import itertools

import onnx
from onnx import TensorProto
from onnx import helper as oh

from dycomp.runtime.onnx_layout import all_graphs, all_nodes


def bool_wheres(model: onnx.ModelProto) -> int:
    """Rewrite every boolean `Where` of `model` (its subgraphs too) in place; how many."""
    if not any(n.op_type == "Where" for n in all_nodes(model.graph)):
        return 0
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference cannot follow the model: ONNX Runtime will say what fails
        return 0
    types = {v.name: v.type.tensor_type.elem_type for g in all_graphs(inferred.graph)
             for v in itertools.chain(g.input, g.output, g.value_info)}
    types.update((t.name, t.data_type) for g in all_graphs(inferred.graph) for t in g.initializer)
    taken = {x for n in all_nodes(model.graph) for x in itertools.chain(n.input, n.output)}
    tags = (t for t in (f"dycomp_where{k}" for k in itertools.count())
            if not any(f"{t}_{s}" in taken for s in ("a", "b", "u8")))
    done = 0
    for g in all_graphs(model.graph):
        nodes = []
        for n in g.node:
            if n.op_type == "Where" and TensorProto.BOOL in (types.get(n.input[1]),
                                                               types.get(n.output[0])):
                nodes += _as_uint8(n, next(tags))
                done += 1
            else:
                nodes.append(n)
        if len(nodes) != len(g.node):
            del g.node[:]
            g.node.extend(nodes)
    return done


def _as_uint8(n: onnx.NodeProto, tag: str) -> list[onnx.NodeProto]:
    c, a, b = n.input
    return [oh.make_node("Cast", [a], [f"{tag}_a"], f"{tag}_a", to=TensorProto.UINT8),
            oh.make_node("Cast", [b], [f"{tag}_b"], f"{tag}_b", to=TensorProto.UINT8),
            oh.make_node("Where", [c, f"{tag}_a", f"{tag}_b"], [f"{tag}_u8"], n.name),
            oh.make_node("Cast", [f"{tag}_u8"], list(n.output), f"{tag}_u8",
                         to=TensorProto.BOOL)]
