"""A comparison of a monotone function of a value, folded into its threshold (a pass on
ONNX graphs).

`if x.std() > t:` exports as `Sqrt(Div(Mul(ReduceMean(d * d), n), n - 1)) > t`, and the
region needs only the decision (the host's `bool`, or an `If` condition once fused),
not the standard deviation. Run on every region before fusion, with the sums into
`Gemm`s (`onnx_backend.lower_onnx`). Every op between the reduced value `v` and the comparison is
monotone non-decreasing and correctly rounded in float32 (`Sqrt`; `Mul` or `Div` by a
positive constant; `Add` or `Sub` of a constant), so `f(v) > t` holds exactly for the
float32 values above one bound: the largest float32 `b` for which it does not hold,
found by bisection over the ordered float32 values with numpy computing `f` the way
ONNX Runtime does (IEEE float32, no fused multiply-add across nodes).
`fold_thresholds` compares `v > b` instead (nested_if: three nodes less). A NaN
compares false either way; the ops between become dead.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from dycomp.backends.onnx_tables import RANDOM_OPS, compile_time_session
from dycomp.runtime.onnx_layout import static_shapes
from dycomp.runtime.onnx_paths import constant, constant_tensor, definitions, reader_counts

_GRAPH = onnx.AttributeProto.GRAPH
_INF = 0x7F800000  # the key of +inf; -inf's is its negation


def fold_thresholds(model: onnx.ModelProto, shapes: dict | None = None) -> int:
    """Fold every such comparison of `model` (subgraphs included); returns how many.
    `shapes`: `static_shapes(model)`, when the caller has it."""
    return _fold(model.graph, {}, static_shapes(model) if shapes is None else shapes,
                 model.opset_import)


def _fold(g: onnx.GraphProto, outer: dict, shapes: dict, opsets) -> int:
    scope = definitions(g, outer)
    done = sum(_fold(a.g, scope, shapes, opsets) for n in g.node for a in n.attribute
               if a.type == _GRAPH)
    readers = reader_counts(g)
    own = {o: n for n in g.node for o in n.output}

    known: dict = {}

    def scalar(name: str) -> np.float32 | None:  # a constant, or computed from constants
        if name not in known:
            value = _scalar(scope.get(name))
            if value is None and name in own and own[name].op_type != "Constant":
                value = _scalar(_computed(name, own, scope, shapes, opsets))
            known[name] = value
        return known[name]

    for cmp in g.node:
        if cmp.op_type not in ("Greater", "GreaterOrEqual") or readers.get(
                cmp.input[0]) != 1 or (t := scalar(cmp.input[1])) is None:
            continue
        steps, v = _chain(cmp.input[0], own, scalar, readers)
        if not steps or shapes.get(v) is None or shapes.get(v) != shapes.get(cmp.input[0]):
            continue
        bound = _bound(steps, t, cmp.op_type == "GreaterOrEqual")
        if bound is None:
            continue
        name = f"{cmp.output[0]}__bound"
        g.initializer.append(numpy_helper.from_array(
            bound.reshape(constant(scope[cmp.input[1]]).shape), name))
        cmp.op_type = "Greater"
        cmp.input[0], cmp.input[1] = v, name
        done += 1
    return done


def _chain(name: str, own: dict, scalar, readers: dict) -> tuple[list, str]:
    """(the monotone steps from a value to `name`, in order; that value), following
    nodes of this graph whose result only the next one reads."""
    steps = []
    while (n := own.get(name)) is not None and readers.get(name) == 1:
        if n.op_type == "Sqrt":
            steps.append(np.sqrt)
            name = n.input[0]
            continue
        c = [scalar(x) for x in n.input]
        if n.op_type not in ("Mul", "Div", "Add", "Sub") or None not in c or c == [None] * 2:
            break
        k = c.index(None)  # the operand that varies
        c = c[1 - k]
        if not np.isfinite(c) or n.op_type in ("Div", "Sub") and k != 0 or \
                n.op_type in ("Mul", "Div") and not c > 0:
            break  # c / x, c - x: decreasing; x * c with c <= 0 not increasing
        steps.append({"Mul": lambda a, c=c: a * c, "Div": lambda a, c=c: a / c,
                      "Add": lambda a, c=c: a + c, "Sub": lambda a, c=c: a - c}[n.op_type])
        name = n.input[k]
    return steps[::-1], name


def _computed(name: str, own: dict, scope: dict, shapes: dict, opsets
              ) -> onnx.TensorProto | None:
    """The value of `name` when the nodes computing it read only constants and the shapes
    of values whose shape is static (`n - 1` from `Shape(x)`): ONNX Runtime runs them
    once, as it would fold them."""
    nodes, consts, seen, todo = {}, {}, set(), [name]
    while todo:
        x = todo.pop()
        seen.add(x)
        n = own.get(x)
        if n is None:
            t = constant_tensor(scope.get(x))
            if t is None:
                return None
            consts[x] = t
        elif n.op_type == "Shape" and n.input[0] in shapes and len(n.attribute) == 0:
            consts[x] = numpy_helper.from_array(np.array(shapes[n.input[0]], np.int64), x)
        elif n.op_type in RANDOM_OPS or any(a.type == _GRAPH for a in n.attribute) \
                or len(nodes) > 16:
            return None
        else:
            nodes[id(n)] = n
            todo += [i for i in n.input if i and i not in seen]
    order = [n for n in {id(m): m for m in own.values()}.values() if id(n) in nodes]
    try:
        session = compile_time_session(order, consts, [], [name], opsets)
        return numpy_helper.from_array(np.asarray(session.run([name], {})[0]))
    except Exception:  # not computable here: no fold
        return None


def _scalar(x) -> np.float32 | None:
    """A one-element float32 constant's value."""
    value = constant(x)
    if value is None or value.dtype != np.float32 or value.size != 1:
        return None
    return value.reshape(())[()]


def _bound(steps: list, t: np.float32, inclusive: bool) -> np.ndarray | None:
    """The largest float32 `b` with `f(b) > t` (`>=` if `inclusive`) false, where `f`
    applies `steps`; None when that holds for no float32 or for all of them."""
    def holds(key: int) -> bool:
        a = _value(key)
        with np.errstate(all="ignore"):
            for f in steps:
                a = f(a)
        return bool(a >= t if inclusive else a > t)

    lo, hi = -_INF, _INF
    if holds(lo) or not holds(hi):
        return None
    while hi - lo > 1:  # holds(lo) false, holds(hi) true
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return _value(lo)


def _value(key: int) -> np.ndarray:
    """The float32 at `key` in the order of float32 values (-0.0 and 0.0 share key 0)."""
    bits = key if key >= 0 else -key | 0x80000000
    return np.array(bits, np.uint32).view(np.float32)
