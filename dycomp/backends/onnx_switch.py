"""Switches over alike options as one copy with gathered weights (a pass on ONNX graphs).

`options[i](x)` for a data-dependent `i` (an `nn.ModuleList` indexed by a computed
expert index, say) is captured as a chain `if i == 0: ... elif i == 1: ... else: ...`
(`dycomp.frontend.ops.switch`), lowered to nested `If` nodes: entering option `k`
costs ONNX Runtime `k + 1` `If`s (~1 us each here) and as many `Equal`s. When every
option computes the same graph with other weights, the chain becomes that graph once,
each weight that differs gathered from the options' weights stacked (`Gather(stack,
i)`), no `If` at all. moe's expert layers (4 options of two 32x64 Linear layers)
measured 1.45x the time of the chosen expert alone as a chain, 1.31x gathered
(benchmarks/README.md). Gathering copies the weights on every call, so options with
more than `GATHER_MAX_WEIGHTS` weights keep their `If`s.

Out-of-range indices: the chain runs the last option for any `i` it does not name
(negative ones and those past the end included); the gathered graph does the same: it
gathers by `Clip(i, -1, n - 1)`, -1 being the last option for `Gather` (without the
`Clip`, a negative `i` picked another option than the chain's, silently, and an `i` past
the end failed where the chain returned a value), a one-element index of rank 1 or more
reshaped to 0-d first (else every gathered weight took its rank). Both found by
tests/test_rewrite_properties_2.py. The frontend (`ops.switch`) compares `range(n)[i]`,
so the chain never sees an index out of range: the `Clip` then changes nothing.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dycomp.passes.cost import IF_US, OP_US
from dycomp.runtime.onnx_paths import constant, definitions

GATHER_MAX_WEIGHTS = 65_536  # elements per option: 256 KiB of float32 copied per call
SWITCH = "switch"  # the name of every `If` of a switch starts so (the builder names them)
_GRAPH = onnx.AttributeProto.GRAPH


def gather_switches(g: onnx.GraphProto, outer: dict | None = None) -> int:
    """Rewrite every switch of alike options in `g` and its subgraphs; returns how many.
    `outer`: what the enclosing graphs define (`definitions`)."""
    done, nodes = 0, []
    scope = definitions(g, outer or {})
    for n in g.node:
        chain = _chain(n, scope)
        alike = _alike([arm for _, arm in chain]) if chain else None
        if alike is None:
            for a in n.attribute:
                if a.type == _GRAPH:
                    done += gather_switches(a.g, scope)
            nodes.append(n)
            continue
        index = _option_index(n, chain[0][0], len(chain), scope, g)
        nodes += index + _gathered(n, index[-1].output[0], chain[0][1], alike, g)
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    return done


def _chain(n, scope) -> list | None:
    """[(index name, option graph)] of the switch `n` heads, in option order, or None."""
    chain = []
    while (case := _case(n, scope)) is not None and case[1] == len(chain) and (
            not chain or case[0] == chain[0][0]):
        then, other = (onnx.helper.get_node_attr_value(n, f"{b}_branch") for b in ("then", "else"))
        chain.append((case[0], then))
        rest = [m for m in other.node if m.op_type not in ("Equal", "Constant", "Identity")]
        if not (len(rest) == 1 and rest[0].op_type == "If" and _forwards(other, rest[0])):
            return chain + [(case[0], other)]
        n, scope = rest[0], definitions(other, scope)
    return None


def _case(n, scope) -> tuple[str, int, np.dtype] | None:
    """(index, k, k's dtype) when `n` is a switch's `If(Equal(index, k))` with a constant
    integer k (an `if` / `elif` chain the user wrote means what its `else` says: never
    gathered)."""
    eq = scope.get(n.input[0]) if n.op_type == "If" and n.name.startswith(SWITCH) else None
    if not isinstance(eq, onnx.NodeProto) or eq.op_type != "Equal":
        return None
    for index, k in (eq.input, eq.input[::-1]):
        k = constant(scope.get(k))
        if k is not None and k.size == 1 and k.dtype.kind == "i":
            return index, int(k), k.dtype
    return None


def _forwards(arm, nested) -> bool:
    """`arm`'s outputs are `nested`'s, as they are or through `Identity`s."""
    ident = {m.output[0]: m.input[0] for m in arm.node if m.op_type == "Identity"}
    return [ident.get(o.name, o.name) for o in arm.output] == list(nested.output)


def _alike(arms: list) -> list | None:
    """When every option graph is the first one's up to names and tensor values (its
    initializers and `Constant`s): those tensors, in order of use, each with its value in
    every option. None when the options differ, hold subgraphs, or gathering would cost
    more than the `If`s it saves."""
    first = arms[0]
    inits = [{t.name: numpy_helper.to_array(t) for t in a.initializer} for a in arms]
    rename: list[dict] = [{} for _ in arms]  # an option's name -> the first option's
    tensors: dict[str, list] = {}
    if not first.node or any(len(a.node) != len(first.node) for a in arms):
        return None
    for nodes in zip(*(a.node for a in arms)):
        n0 = nodes[0]
        for j, m in enumerate(nodes):
            if ((m.op_type, m.domain, len(m.input), len(m.output), _attributes(m)) !=
                    (n0.op_type, n0.domain, len(n0.input), len(n0.output), _attributes(n0))
                    and n0.op_type != "Constant") or any(
                    a.type == _GRAPH for a in m.attribute):
                return None
            for x, x0 in zip(m.input, n0.input):
                if x in rename[j]:  # computed in the option, or a weight seen before
                    if rename[j][x] != x0:
                        return None
                elif x in inits[j] and x0 in inits[0]:
                    rename[j][x] = x0
                    tensors.setdefault(x0, [None] * len(arms))[j] = inits[j][x]
                elif x != x0:  # an outer value: the same for every option
                    return None
            rename[j].update(zip(m.output, n0.output))
        if n0.op_type == "Constant":
            tensors[n0.output[0]] = [constant(m) for m in nodes]
    if any([rename[j].get(o.name) for o in a.output] != [o.name for o in first.output]
           for j, a in enumerate(arms)):
        return None
    values = list(tensors.values())
    if any(v is None or v.shape != vs[0].shape or v.dtype != vs[0].dtype
           for vs in values for v in vs):
        return None
    gathers = sum(not all(np.array_equal(v, vs[0]) for v in vs) for vs in values)
    n = len(arms)
    ifs = (n * (n - 1) // 2 + n - 1) / n  # entered on average, every option as likely
    weights = sum(vs[0].size for vs in values)
    cost = (gathers + 1) * OP_US  # the gathers and the index's `Clip`
    if weights > GATHER_MAX_WEIGHTS or cost >= ifs * IF_US + (n - 1) * OP_US:
        return None
    return list(tensors.items())


def _attributes(n) -> list:
    return sorted((a.name, a.SerializeToString()) for a in n.attribute)


def _option_index(n, index: str, options: int, scope: dict, g) -> list:
    """Nodes computing the option the chain runs, as `Gather` reads it: `Clip(index, -1,
    options - 1)` (an index no case names, negative or past the end, runs the last
    option), reshaped to 0-d unless `index` is known to be 0-d (`Equal` takes a
    one-element index of any rank; `Gather` would give its rank to every weight)."""
    out, nodes = f"{n.output[0]}__option", []
    if not _zero_d(index, scope, g):
        empty = numpy_helper.from_array(np.zeros(0, np.int64), f"{out}_scalar")
        g.initializer.append(empty)
        nodes.append(helper.make_node("Reshape", [index, empty.name], [out + "_0d"],
                                      name=out + "_0d"))
        index = out + "_0d"
    dtype = _case(n, scope)[2]
    bounds = [numpy_helper.from_array(np.array(b, dtype), f"{out}_{b}")
              for b in (-1, options - 1)]
    g.initializer.extend(bounds)
    return nodes + [helper.make_node("Clip", [index] + [b.name for b in bounds], [out],
                                     name=out)]


def _zero_d(name: str, scope: dict, g) -> bool:
    """`name` is a 0-d input of `g` or a `Reshape` to the constant shape []."""
    if any(v.name == name for v in g.input):
        v = next(v for v in g.input if v.name == name)
        t = v.type.tensor_type
        return t.HasField("shape") and not t.shape.dim
    n = scope.get(name)
    if not isinstance(n, onnx.NodeProto) or n.op_type != "Reshape" or n.domain:
        return False
    shape = constant(scope.get(n.input[1]))
    return shape is not None and shape.size == 0


def _gathered(n, index: str, first, tensors: list, g) -> list:
    """The first option's nodes in place of the switch `n`: each tensor that differs
    between options gathered by `index` from their stack, the others as they are."""
    nodes = []
    for name, values in tensors:
        if all(np.array_equal(v, values[0]) for v in values):
            g.initializer.append(numpy_helper.from_array(values[0], name))
        else:
            g.initializer.append(numpy_helper.from_array(np.stack(values), name + "__options"))
            nodes.append(helper.make_node("Gather", [name + "__options", index], [name],
                                          name=name + "__gather", axis=0))
    made = {name for name, _ in tensors}
    nodes += [m for m in first.node if not (m.op_type == "Constant" and m.output[0] in made)]
    nodes += [helper.make_node("Identity", [o.name], [out], name=f"{out}__switch")
              for o, out in zip(first.output, n.output)]
    return nodes
