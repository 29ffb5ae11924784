"""Blocked (NCHWc) layout across `If` boundaries, for this CPU, when a session is made.

ONNX Runtime runs convolutions in a blocked channel layout (NCHWc, its
`com.microsoft.nchwc` ops) where it can, but it converts each graph on its own: a value
entering an `If` arm is reordered into the blocked layout there, every arm output is
reordered back, and an arm's residual `Add` + `Relu` stays outside its convolution. A
gated ResNet pays for both on every block it runs.

`across_branches` takes the model ONNX Runtime optimized for this CPU and lets blocked
values cross `If` boundaries:

- an arm reads the outer blocked value instead of reordering the plain one again;
- an `If` output that every arm has blocked stays blocked;
- `Add(conv, x)` (+ `Relu`) of a blocked convolution and a blocked `x` of the same shape
  becomes the convolution's fused sum (and activation), as ONNX Runtime does within one
  graph;
- `GlobalAveragePool` and `ReduceMean` over H and W of a blocked value pool it blocked
  (a `ReduceMean` that drops H and W over a multiple of 16 channels then only reshapes:
  the pooled blocked values are already in plain order);

then drops the reorders nobody reads. Every value keeps its plain (NCHW) name wherever a
node still reads it that way, so whatever no rule matches runs as before.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper as oh

from dycomp.runtime.onnx_paths import drop_dead, reader_counts

NCHWC = "com.microsoft.nchwc"
FLAT = "dycomp_nchwc_flat"  # the shape [0, -1] (N, everything else), added where read
_GRAPH = onnx.AttributeProto.GRAPH


def across_branches(optimized: onnx.ModelProto, shapes: dict[str, tuple]) -> bool:
    """Rewrite `optimized` (ONNX Runtime's own optimized model, loaded back) in place;
    False when nothing changed. `shapes`: static shapes of the original model's values by
    name (a residual `Add` is fused only when both sides' shapes are known and equal)."""
    if not any(n.domain == NCHWC for n in all_nodes(optimized.graph)) or not any(
            n.op_type == "If" for n in optimized.graph.node):
        return False
    _unique_names(optimized.graph)
    before = [n.op_type for n in all_nodes(optimized.graph)]
    counter = itertools.count()
    _Layout(shapes, lambda name: f"{name}__nchwc{next(counter)}").graph(
        optimized.graph, {}, {})
    if any(FLAT in n.input for n in all_nodes(optimized.graph)):
        optimized.graph.initializer.append(onnx.numpy_helper.from_array(
            np.array([0, -1], np.int64), FLAT))
    drop_dead(optimized.graph)
    return [n.op_type for n in all_nodes(optimized.graph)] != before


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """name -> shape of every value of `model` (its subgraphs too) whose shape ONNX's
    inference pins down."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model inference cannot follow: no residual fusion
        return {}
    shapes = {}
    for g in all_graphs(model.graph):
        for v in itertools.chain(g.input, g.output, g.value_info):
            dims = v.type.tensor_type.shape.dim
            if v.type.HasField("tensor_type") and all(d.HasField("dim_value") for d in dims):
                shapes[v.name] = tuple(d.dim_value for d in dims)
    return shapes


class _Layout:
    def __init__(self, shapes, fresh):
        self.shapes, self.fresh = shapes, fresh

    def graph(self, g, blocked, alias):
        """Rewrite `g`'s nodes; returns its `blocked` map at the end: plain name ->
        (blocked name, channels), outer scopes' entries included. `alias`: the outputs of
        dropped `ReorderInput`s -> the blocked value they read."""
        blocked, alias = dict(blocked), dict(alias)
        readers = reader_counts(g)
        producer = {o: n for n in g.node for o in n.output}
        nodes, fused = [], set()
        for n in list(g.node):
            if id(n) in fused:
                continue
            n.input[:] = [alias.get(i, i) for i in n.input]
            if _is(n, "ReorderInput") and n.input[0] in blocked:
                alias[n.output[0]] = blocked[n.input[0]][0]
                continue
            if _is(n, "ReorderOutput"):
                blocked[n.output[0]] = (n.input[0], _attr(n, "channels"))
            elif n.op_type == "If":
                nodes += self.branch(n, blocked, alias)
                continue
            elif any(a.type == _GRAPH for a in n.attribute):  # Loop, Scan: reads only
                for a in n.attribute:
                    if a.type == _GRAPH:
                        self.graph(a.g, blocked, alias)
            elif n.op_type == "Identity" and n.input[0] in blocked:
                b, channels = blocked[n.input[0]]
                nodes.append(oh.make_node("Identity", [b], [self.fresh(n.output[0])]))
                blocked[n.output[0]] = (nodes[-1].output[0], channels)
            elif (pooled := self.pool(n, blocked)) is not None:
                nodes += pooled
                continue
            elif (res := self.residual(n, blocked, readers, producer, nodes)) is not None:
                nodes.append(res[0])
                fused |= res[1]
                continue
            nodes.append(n)
        del g.node[:]
        g.node.extend(nodes)
        return blocked

    def branch(self, n, blocked, alias):
        """The `If` node, its arms rewritten; outputs every arm has blocked become blocked
        (a `ReorderOutput` after the `If` keeps the plain name)."""
        arms = [a.g for a in n.attribute if a.type == _GRAPH]
        ends = [self.graph(arm, blocked, alias) for arm in arms]
        after = []
        for k, out in enumerate(n.output):
            got = [end.get(arm.output[k].name) for arm, end in zip(arms, ends)]
            if None in got or len({channels for _, channels in got}) != 1:
                continue
            for arm, (b, _) in zip(arms, got):
                if b not in {o for node in arm.node for o in node.output}:  # an outer value
                    arm.node.append(oh.make_node("Identity", [b], [self.fresh(b)]))
                    b = arm.node[-1].output[0]
                arm.output[k].CopyFrom(oh.make_tensor_value_info(
                    b, arm.output[k].type.tensor_type.elem_type, None))
            n.output[k] = self.fresh(out)
            after.append(_reorder_output(n.output[k], out, got[0][1]))
            blocked[out] = (n.output[k], got[0][1])
        return [n, *after]

    def pool(self, n, blocked):
        """GlobalAveragePool / ReduceMean over H, W of a blocked value: pooled blocked."""
        if n.domain or not n.input or n.input[0] not in blocked:
            return None
        if n.op_type == "ReduceMean":
            axes = _attr(n, "axes")
            if len(n.input) > 1 or axes is None or {a % 4 for a in axes} != {2, 3}:
                return None
        elif n.op_type != "GlobalAveragePool":
            return None
        b, channels = blocked[n.input[0]]
        pooled = self.fresh(n.output[0])
        nodes = [oh.make_node("GlobalAveragePool", [b], [pooled], domain=NCHWC)]
        if n.op_type == "ReduceMean" and not _attr(n, "keepdims", 1) and not channels % 16:
            # blocked [N, C, 1, 1] with C a multiple of the block (8 or 16 channels) is
            # plain [N, C] byte for byte: one Reshape, not ReorderOutput + Flatten
            nodes.append(oh.make_node("Reshape", [pooled, FLAT], [n.output[0]]))
        elif n.op_type == "ReduceMean" and not _attr(n, "keepdims", 1):
            plain = self.fresh(n.output[0])
            nodes += [_reorder_output(pooled, plain, channels),
                      oh.make_node("Flatten", [plain], [n.output[0]], axis=1)]
        else:
            nodes.append(_reorder_output(pooled, n.output[0], channels))
            blocked[n.output[0]] = (pooled, channels)
        return nodes

    def residual(self, n, blocked, readers, producer, nodes):
        """`Add(ReorderOutput(conv), x)` (+ a lone `Relu` reader) with `x` blocked and of
        the same shape: the blocked conv sums `x` (and applies the Relu) itself. Returns
        the `ReorderOutput` that now names the result, and the nodes it replaces."""
        if n.op_type != "Add" or n.domain or len(n.input) != 2:
            return None
        emitted = {o: i for i, node in enumerate(nodes) for o in node.output}
        for c, x in (n.input, n.input[::-1]):
            reorder = producer.get(c)
            if reorder is None or not _is(reorder, "ReorderOutput") or x not in blocked:
                continue
            conv = producer.get(reorder.input[0])
            if (conv is None or conv.domain != NCHWC or conv.op_type != "Conv"
                    or len(conv.input) > 3 or _attr(conv, "activation") is not None
                    or readers.get(c, 0) != 1 or readers.get(conv.output[0], 0) != 1
                    or self.shapes.get(c) is None or self.shapes.get(c) != self.shapes.get(x)
                    or blocked[x][1] != _attr(reorder, "channels")
                    or emitted.get(blocked[x][0], -1) > emitted.get(conv.output[0], -1)):
                continue
            conv.input.extend([""] * (3 - len(conv.input)) + [blocked[x][0]])
            out, replaced = n.output[0], {id(n)}
            relu = _lone_reader(n.output[0], readers, producer.values())
            if relu is not None and relu.op_type == "Relu" and not relu.domain:
                conv.attribute.append(oh.make_attribute("activation", "Relu"))
                out = relu.output[0]
                replaced.add(id(relu))
            blocked.pop(c, None)  # the conv's output is no longer the plain conv
            blocked[out] = (conv.output[0], _attr(reorder, "channels"))
            return _reorder_output(conv.output[0], out, _attr(reorder, "channels")), replaced
        return None


def _reorder_output(blocked: str, plain: str, channels: int):
    return oh.make_node("ReorderOutput", [blocked], [plain], domain=NCHWC,
                        channels=channels, channels_last=0)


def _is(n, op: str) -> bool:
    return n.op_type == op and n.domain == NCHWC and not _attr(n, "channels_last", 0)


def _attr(n, name, default=None):
    return next((oh.get_attribute_value(a) for a in n.attribute if a.name == name), default)


def _lone_reader(name, readers, nodes):
    if readers.get(name, 0) != 1:
        return None
    return next((n for n in nodes if name in n.input), None)


def all_graphs(g):
    """`g` and every subgraph of its nodes, outer first."""
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == _GRAPH:
                yield from all_graphs(a.g)


def all_nodes(g) -> list:
    """Every node of `g` and of its subgraphs, each node before its subgraphs' nodes."""
    out = []
    for n in g.node:
        out.append(n)
        for a in n.attribute:
            if a.type == _GRAPH:
                out += all_nodes(a.g)
    return out


def _unique_names(graph) -> None:
    """ONNX Runtime's optimized model can define one name in several scopes (its NCHWc
    pass names values per graph), which it then refuses to load: rename every value a
    subgraph defines that some other scope defines too."""
    seen = {v.name for v in itertools.chain(graph.input, graph.initializer)}
    seen |= {o for n in graph.node for o in n.output}
    counter = itertools.count()

    def define(name, rename):
        if name in seen:
            rename[name] = f"{name}__u{next(counter)}"
            name = rename[name]
        seen.add(name)
        return name

    def scope(g, outer):
        rename = dict(outer)
        for v in itertools.chain(g.initializer, g.input):
            v.name = define(v.name, rename)
        for n in g.node:
            n.input[:] = [rename.get(i, i) for i in n.input]
            subgraphs(n, rename)
            n.output[:] = [define(o, rename) if o else o for o in n.output]
        for o in g.output:
            o.name = rename.get(o.name, o.name)

    def subgraphs(n, rename):
        for a in n.attribute:
            if a.type == _GRAPH:
                scope(a.g, rename)

    for n in graph.node:
        subgraphs(n, {})
