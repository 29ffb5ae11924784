"""No exported region may hold a traced value as a constant.

The TorchScript-based ONNX exporter records a tensor it cannot trace back to the region's
inputs (`.data`, a tensor rebuilt from Python numbers) as a `Constant` holding the value it
had on the example inputs: the subgraph then returns that example's value on every input,
silently. After export, every initializer and `Constant` of a region's model is compared
with the example values of the region's traced tensors (its inputs and every value computed
from them); a match that is not one of the region's own FX constants (weights, literals)
raises an `UnsupportedError` naming the op and its source line.

Values with fewer than two elements or all elements equal are not compared: zeros, ones and
flags are everywhere and would match by chance.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import fx

from dycomp.errors import UnsupportedError
from dycomp.runtime.onnx_layout import all_nodes

log = logging.getLogger(__name__)

# Ops whose result depends on the input's shape and dtype only: their values are constants
# (the exporter folds them, legitimately).
_SHAPE_ONLY = {"size", "dim", "numel", "zeros_like", "ones_like", "empty_like", "full_like",
               "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "type",
               "shape", "dtype", "device"}
# ops whose arguments after the first give only a dtype or device (`t.type_as(x)`, `t.to(x)`)
_TYPE_ONLY_REST = {"type_as", "to"}


def check_region(region, model: onnx.ModelProto) -> None:
    """Raise `UnsupportedError` if `model` (the export of `region`) holds one of the
    region's traced example values as a constant."""
    traced, fixed = _traced(region)
    if not traced:
        return
    sizes = {k[0] for k in traced}
    for name, value in constants(model):
        if value.size not in sizes:
            continue
        key = fingerprint(value)
        if key in traced and key not in fixed:
            raise _frozen(region, name, traced[key])


def check_captured(graph) -> None:
    """Raise `UnsupportedError` if a region's anonymous constant (a tensor capture met
    outside the traced values, such as `torch.tensor(t)` of a traced `t`, which copies
    its example value) is one of the region's traced values. Of the region's inputs only
    the program's own (the call's tensors) are compared: a loop-carried input may start
    as a constant."""
    inputs = {p.name for p in graph.params}
    for region in graph.regions.values():
        gm = region.gm
        consts = [n for n in gm.graph.nodes if n.op == "get_attr"
                  and str(n.target).startswith("_const")] if gm is not None else []
        if not consts:
            continue
        traced, _ = _traced(region, inputs)
        for node in consts:
            key = fingerprint(getattr(gm, node.target).detach().cpu().numpy())
            if key in traced:
                raise _frozen(region, str(node.target), traced[key],
                              "`torch.tensor(t)` of a traced `t` (it copies the example "
                              "value)")


def traced_values(gm: fx.GraphModule, inputs: set | None = None) -> tuple[dict, set]:
    """({fingerprint: node} of the values that depend on the inputs, {fingerprints of the
    graph's own constants and weights}), from a run on the placeholders' examples. `inputs`: the
    placeholders whose own values count (default all)."""
    values = _node_values(gm)
    traced, dependent = {}, set()
    for node in gm.graph.nodes:
        if node.op in ("get_attr", "output"):
            continue
        if node.op != "placeholder" and not _depends(node, dependent):
            continue
        dependent.add(node)
        if node.op == "placeholder" and inputs is not None and node.name not in inputs:
            continue
        for key in _keys(values.get(node)):
            traced[key] = node  # the latest: the op that made the value last
    sizes = {k[0] for k in traced}
    own = [values.get(n) for n in gm.graph.nodes if n.op == "get_attr"]
    own += list(gm.parameters()) + list(gm.buffers())  # the weights of its modules
    fixed = {k for v in own if _numel(v) in sizes for k in _keys(v)}
    return traced, fixed


def _numel(v) -> int:
    return v.numel() if isinstance(v, torch.Tensor) else -1


def _traced(region, inputs: set | None = None) -> tuple[dict, set]:
    """`traced_values` of a region; empty (and a warning) if its examples do not run."""
    try:
        return traced_values(region.gm, inputs)
    except Exception as e:  # the check needs a run of the region on its examples
        log.warning("region %s: frozen-constant check skipped (%s)", region.name, e)
        return {}, set()


def _depends(node: fx.Node, dependent: set) -> bool:
    """Whether `node`'s value depends on the values of `dependent` nodes (a shape-only op
    depends on its other arguments: `x.new_tensor(t)`, `full_like(x, t)`)."""
    inputs = node.all_input_nodes
    if _target_name(node) in _SHAPE_ONLY and node.args and isinstance(node.args[0], fx.Node):
        inputs = [a for a in inputs if a is not node.args[0]]
    elif _target_name(node) in _TYPE_ONLY_REST and node.args:
        inputs = [a for a in inputs if a is node.args[0]]
    return any(a in dependent for a in inputs)


def constants(model: onnx.ModelProto):
    """(name, array) of every initializer and `Constant` value, subgraphs included."""
    for init in model.graph.initializer:
        yield init.name, numpy_helper.to_array(init)
    for node in all_nodes(model.graph):
        if node.op_type != "Constant":
            continue
        for a in node.attribute:
            if a.name == "value":
                yield node.output[0], numpy_helper.to_array(a.t)


def fingerprint(value) -> tuple | None:
    """(size, digest) of an array's elements as float64, or None for values too common to
    tell apart (fewer than 2 elements, or all equal)."""
    flat = np.asarray(value).reshape(-1)
    if flat.size < 2 or flat.dtype == object or bool((flat == flat[0]).all()):
        return None
    data = np.ascontiguousarray(flat, dtype=np.float64).tobytes()
    return flat.size, hashlib.blake2b(data, digest_size=16).digest()


def _keys(value) -> list:
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.is_sparse:
            return []
        key = fingerprint(value.detach().cpu().numpy())
        return [key] if key is not None else []
    if isinstance(value, (tuple, list)):
        return [k for v in value for k in _keys(v)]
    return []


def _node_values(gm: fx.GraphModule) -> dict:
    values: dict = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            values[n] = super().run_node(n)
            return values[n]

    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        Recorder(gm).run(*[_clone(p.meta.get("example")) for p in phs])
    return values


def _clone(v):
    return v.clone() if isinstance(v, torch.Tensor) else v


def _target_name(node: fx.Node) -> str:
    if node.op in ("call_method", "call_module"):
        return node.target
    if node.op == "call_function":
        if getattr(node.target, "__name__", "") == "getattr":
            return str(node.args[1])
        return getattr(node.target, "__name__", "")
    return ""


def _frozen(region, const: str, node: fx.Node, cause: str = "") -> UnsupportedError:
    """`cause` set: a constant of the captured FX graph; else one the exporter made."""
    what = _target_name(node) or node.op
    where = "region" if cause else "the ONNX export of region"
    hint = f"compute the value with tensor operations, not {cause}" if cause else (
        "compute the value with tensor operations, not `.data` or `.numpy()` of a traced "
        "tensor, or use backend='torch'")
    return UnsupportedError(
        f"{where} {region.name} holds the example value of `{what}` ({node.name}) as a "
        f"constant ({const}): it would give that value on every input",
        where=node.meta.get("line") or ", ".join(region.lines[:1]), hint=hint)
