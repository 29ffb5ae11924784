"""Values a `Loop` body computes from the iteration number alone, looked up in a table.

A loop with a known trip count (`for t in range(n)`, or a counted `while`) often
computes something from its counter only: `self.eos_ramp * t` in decoder's greedy
loop is a `Cast` to double, a `Mul` and a `Cast` back on every iteration, which the
static graph of one path folds into constants. `tabulate` runs those nodes once per
iteration number at compile time (ONNX Runtime, so the values are the ones the body
would compute) and gathers each iteration's value from the table instead.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from dycomp.runtime.onnx_paths import constant_tensor, node_reads

log = logging.getLogger(__name__)

MAX_TRIPS = 4096  # table rows
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Multinomial", "Bernoulli"}  # a fresh value on every run: never tabulated
_GRAPH = onnx.AttributeProto.GRAPH


def tabulate(nodes: list, inits: list, outputs: list, outer: dict, it: str,
             trips: int | None, opsets: list) -> tuple[list, list]:
    """The body's `nodes` and `inits` with the nodes that read only the iteration number
    `it` and constants replaced by `Gather`s from tables. `outputs`: the body's output
    names; `outer`: the constants of the enclosing graph (name -> TensorProto)."""
    consts = {**outer, **{t.name: t for t in inits}}
    consts.update((n.output[0], t) for n in nodes if (t := constant_tensor(n)) is not None)
    counter = {it}
    chain = []
    for n in nodes:
        if n.output[0] in consts or n.op_type in RANDOM_OPS or any(
                a.type == _GRAPH for a in n.attribute):
            continue
        if counter.intersection(n.input) and all(x in counter or x in consts or not x
                                                 for x in n.input):
            chain.append(n)
            counter.update(n.output)
    if not trips or trips > MAX_TRIPS or len(chain) < 2:
        return nodes, inits
    made = {o for n in chain for o in n.output}
    rest = [n for n in nodes if n.output[0] not in made]
    read = {x for n in rest for x in node_reads(n)} | set(outputs)
    needed = sorted(made & read)
    try:
        tables = _evaluate(chain, consts, it, trips, needed, opsets)
    except Exception as e:  # ONNX Runtime cannot run the nodes alone: keep them
        log.debug("loop counter table not built: %s", e)
        tables = None
    if tables is None:
        return nodes, inits
    gathers = [helper.make_node("Gather", [f"{name}__table", it], [name], axis=0,
                                name=f"{name}__gather") for name in needed]
    tables = [numpy_helper.from_array(t, f"{name}__table") for name, t in zip(needed, tables)]
    return gathers + rest, inits + tables


def _evaluate(chain, consts, it, trips, needed, opsets) -> list | None:
    """Each needed value for iterations 0 .. trips-1, stacked; None if they change shape."""
    sess = compile_time_session(chain, consts, [helper.make_tensor_value_info(
        it, onnx.TensorProto.INT64, [])], needed, opsets)
    rows = [sess.run(needed, {it: np.array(i, np.int64)}) for i in range(trips)]
    columns = [[np.asarray(r[k]) for r in rows] for k in range(len(needed))]
    if any(len({(v.shape, v.dtype) for v in col}) > 1 for col in columns):
        return None
    return [np.stack(col) for col in columns]


def compile_time_session(nodes: list, consts: dict, inputs: list, outputs: list,
                         opsets) -> ort.InferenceSession:
    """A session running `nodes` on the constants they read (`consts`: name ->
    tensor) and `inputs`, unoptimized: the values ONNX Runtime's kernels compute."""
    read = {x for n in nodes for x in n.input}
    g = helper.make_graph(nodes, "compile_time", inputs,
                          [onnx.ValueInfoProto(name=n) for n in outputs],
                          [_named(consts[x], x) for x in sorted(read) if x in consts])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(helper.make_model(g, opset_imports=opsets).SerializeToString(),
                                so, providers=["CPUExecutionProvider"])


def _named(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(t)
    out.name = name
    return out


