"""Matrix-vector regions: large weights, little work per call, faster on one thread.

`model_threads` (onnx_backend.py) gives a region's ONNX Runtime session two intra-op
threads when its weights are large. Weights say how much memory a call reads, not how
much it computes: a mixture of experts at batch 1 holds 3.9 M weights in ten experts,
each a (1 x 3072) @ (3072 x 128) product on the row routed to it. There the worker pool
only costs: moe's expert region ran 9-15 % faster per call on one thread
(benchmarks/corpus/profile_regions.py, A/B `t1`, see benchmarks/corpus/README.md).

This rule estimates the largest single `MatMul` / `Gemm` of the region at its traced
example's shapes (multiply-accumulates, dynamic dimensions at their example sizes) and
keeps one thread when even that one is small (`MATVEC_MACS`). Regions it cannot size
(fused regions with dynamic inputs, whose examples are gone; shapes ONNX inference
cannot follow) keep the weights rule.
"""

from __future__ import annotations

import logging
import math

import onnx
from onnx import helper

from dycomp.runtime.onnx_layout import all_nodes, static_shapes

log = logging.getLogger(__name__)

# Below this many multiply-accumulates, the region's largest matrix product is a
# matrix-vector product or close to one (moe at batch 1: 0.39 M per expert; at batch 8
# about 1.2 M); a ViT's or BERT's projections are 20-230 M.
MATVEC_MACS = 1 << 21
_PRODUCTS = ("MatMul", "Gemm")
_KEEP_DATA = 1024


def largest_product(model: onnx.ModelProto, examples: list) -> int | None:
    """Multiply-accumulates of the model's largest MatMul / Gemm with its inputs shaped
    as `examples` (one shape per graph input, in order); None when some product cannot
    be sized (or there is none)."""
    pinned = _pin_inputs(model, examples)
    if pinned is None:
        return None
    shapes = static_shapes(pinned)
    sizes = []
    for node in all_nodes(pinned.graph):
        if node.op_type not in _PRODUCTS:
            continue
        a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not a or not out:
            return None
        k = a[0] if node.op_type == "Gemm" and _attr(node, "transA") else a[-1]
        sizes.append(math.prod(out) * k)
    return max(sizes) if sizes else None


def is_matvec(model: onnx.ModelProto, examples: list | None) -> bool:
    """Whether the region's largest matrix product is below `MATVEC_MACS` at its
    example's shapes (False when it cannot tell)."""
    if not examples:
        return False
    try:
        macs = largest_product(model, examples)
    except Exception as e:  # an estimate, never a reason to fail: keep the weights rule
        log.debug("no matrix-product estimate: %s: %s", type(e).__name__, e)
        return False
    return macs is not None and macs < MATVEC_MACS


def example_shapes(region) -> list | None:
    """The traced example shape of each input of a region's model, in order; a fused
    region's static input shapes (None when some input has no example or static shape)."""
    if region.gm is None:  # fused: its model's own input shapes, when all are static
        dims = [i.type.tensor_type.shape.dim for i in region.onnx.graph.input]
        if all(d.HasField("dim_value") for ds in dims for d in ds):
            return [tuple(d.dim_value for d in ds) for ds in dims]
        return None
    shapes = []
    for ph in region.placeholders:
        ex = ph.meta.get("example")
        if not hasattr(ex, "shape"):
            return None
        shapes.append(tuple(ex.shape))
    return shapes


def _pin_inputs(model: onnx.ModelProto, examples: list) -> onnx.ModelProto | None:
    """A copy of `model` for shape inference: inputs of the example's shapes, large
    initializers as typed inputs without their data (a copy of BERT's weights for each
    region would cost seconds of compile time)."""
    if len(examples) != len(model.graph.input):
        return None
    g = model.graph
    graph = onnx.GraphProto(name=g.name, node=g.node, output=g.output)
    for inp, shape in zip(g.input, examples):
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            return None
        graph.input.append(helper.make_tensor_value_info(
            inp.name, inp.type.tensor_type.elem_type, [int(n) for n in shape]))
    for t in g.initializer:
        if math.prod(t.dims) <= _KEEP_DATA:  # shapes for Reshape, axes, scalars
            graph.initializer.append(t)
        else:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type,
                                                                  list(t.dims)))
    return helper.make_model(graph, opset_imports=list(model.opset_import),
                             ir_version=model.ir_version)


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)
