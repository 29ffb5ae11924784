"""ONNX backend: every region's GraphModule exported to an ONNX model (bytes).

Export uses the TorchScript-based `torch.onnx.export(..., dynamo=False)`: a region is a
static straight-line graph, and that exporter handles one in ~30 ms where the dynamo
exporter takes ~20x longer. Inputs that change shape between calls (`meta["dynamic"]`,
from `dycomp.ir.shapes.mark_dynamic`) get symbolic dimensions; ops the exporter cannot
translate are reported all at once, each with its source line.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import operator
import os
import sys
import time
import warnings

import numpy as np
import onnx
import torch
from torch import fx
from torch.fx.node import _get_qualified_name

from dycomp.backends.frozen_values import check_region
from dycomp.backends.onnx_gemm_sums import fold_sums_into_gemms
from dycomp.backends.onnx_grouped import lower_grouped, rewritten
from dycomp.backends.onnx_pools import lower_adaptive_pools
from dycomp.backends.onnx_resize import lower_bicubic
from dycomp.backends.onnx_thresholds import fold_thresholds
from dycomp.backends.onnx_where import bool_wheres
from dycomp.backends.torch_fastpath import no_fastpath
from dycomp.errors import UnsupportedError
from dycomp.ir.shapes import mark_dynamic
from dycomp.runtime.onnx_layout import (
    all_nodes,  # noqa: F401 (re-exported)
    static_shapes,
)
from dycomp.runtime.onnx_paths import drop_dead

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


class _ExportFailure(Exception):
    """One region failed to export; `ops` lists (op name, source line, reason)."""

    def __init__(self, region: str, ops: list[tuple[str, str, str]]):
        super().__init__(region)
        self.region, self.ops = region, ops


def export_regions(graph, opset: int = DEFAULT_OPSET) -> dict[str, bytes]:
    """Region name -> serialized, checker-validated ONNX model; each FX region keeps its
    model as `region.onnx`.

    Regions that already are ONNX models (`region.gm is None`, from a fusing pass) are
    serialized as they are. Raises one `UnsupportedError` listing every op of every region
    that cannot be exported."""
    if all(r.gm is not None for r in graph.regions.values()):
        mark_dynamic(graph)
    failures = []
    for region in graph.regions.values():
        try:
            if region.gm is not None:
                region.onnx = export_region_model(region, opset)
        except _ExportFailure as f:
            failures.append(f)
    if failures:
        raise _unsupported(failures, opset)
    return {name: r.onnx.SerializeToString() for name, r in graph.regions.items()}


def lower_onnx(graph, threads: int = 2, opset: int = DEFAULT_OPSET, fuse: bool = True,
               quantize=None):
    """An `OnnxExecutor` for the graph's regions; its `.models` are the exported bytes.

    `quantize(graph)` rewrites the exported regions' ONNX models before they are fused.
    With `fuse`, host branches and loops around regions are lowered into ONNX `If` /
    `Loop` nodes (`onnx_fuse.fuse_branches`); `graph` then holds the fused, ONNX-only
    regions."""
    from dycomp.backends.onnx_fuse import fuse_branches
    from dycomp.runtime.errors import ArtifactError
    from dycomp.runtime.onnx_executor import OnnxExecutor

    models = export_regions(graph, opset)
    if quantize is not None:
        quantize(graph)
    folded = sum(_simplify(r.onnx) for r in graph.regions.values())
    unfused = _unfused(graph) if fuse else None
    before = fusion_snapshot(graph) if fuse else None
    n = fuse_branches(graph) if fuse else None
    if n:
        log.info("lowered %d host branches and %d loops into ONNX If / Loop nodes: %d "
                 "subgraphs left", n["If"], n["Loop"], len(graph.regions))
        graph.verify()
    if quantize is not None or n or folded:  # the regions' models changed since export
        models = {name: r.onnx.SerializeToString() for name, r in graph.regions.items()}
    threads = thread_plan(graph, threads)
    traced = {name: (r.traced.SerializeToString(), r.ran)
              for name, r in graph.regions.items() if r.traced is not None}
    try:
        executor = OnnxExecutor(models, threads=threads, traced=traced)
        if n:
            executor.unfused = unfused
            executor.before_fusion = before  # the path check rebuilds it marked
        return executor
    except ArtifactError as e:  # a fresh export ONNX Runtime cannot load: a backend gap
        raise _unloadable(graph, getattr(e, "failed", {}), e) from e


def _unfused(graph) -> tuple:
    """(host source, region models, region lines) before branches are fused: what the
    path-covering self-check forces (`dycomp/check_paths.py`)."""
    return (graph.host_source(), {n: r.onnx.SerializeToString() for n, r in
                                  graph.regions.items()},
            {n: ", ".join(r.lines[:2]) for n, r in graph.regions.items()})


def lower_for_export(gm: fx.GraphModule, dynamic: bool) -> fx.GraphModule:
    """`gm` with what the exporter refuses or ONNX Runtime runs slowly rewritten first:
    non-dividing adaptive pools (`onnx_pools`), bicubic interpolation (`onnx_resize`),
    grouped matrix products and histograms (`onnx_grouped`).
    `dynamic`: the region is exported with dynamic axes."""
    return lower_grouped(lower_bicubic(lower_adaptive_pools(gm, dynamic=dynamic),
                                       dynamic=dynamic))


def fusion_snapshot(graph):
    """What `fuse_branches` reads of `graph`, copied so that fusing the copy leaves the
    graph alone: its host body (copied) and its regions (the same models)."""
    snap = copy.copy(graph)
    snap.body = copy.deepcopy(graph.body)
    snap.regions = {name: copy.copy(r) for name, r in graph.regions.items()}
    return snap


def _simplify(model: onnx.ModelProto) -> int:
    """A region's sums into `Gemm`s and decisions into thresholds (one shape inference for
    both: the folds keep every name they read), then what they left unread dropped."""
    shapes = static_shapes(model)
    done = fold_sums_into_gemms(model, shapes) + fold_thresholds(model, shapes)
    if done:
        drop_dead(model.graph)
    return done


# Intra-op parallelism pays only for heavy subgraphs (convolutions or large weights); a
# light one runs faster on one thread, with no worker pool to wake (cost rule measured
# in benchmarks/README.md). A recurrent step is a batch-1 matrix-vector product: heavy
# by its weights only (act's 32-wide GRU 1.7 % faster on one thread, the decoder's
# 1.1 %).
HEAVY_OPS = {"Conv", "ConvTranspose"}
HEAVY_WEIGHTS = 1 << 18


def thread_plan(graph, threads: int) -> dict[str, int]:
    """Intra-op threads per lowered subgraph: `threads` for heavy ones, 1 for the rest
    (matrix-vector regions included: `onnx_threads`)."""
    from dycomp.backends.onnx_threads import example_shapes, is_matvec

    plan = {name: model_threads(region.onnx, threads) for name, region in graph.regions.items()}
    for name, region in graph.regions.items():
        if plan[name] > 1 and not _has_heavy_ops(region.onnx) and is_matvec(
                region.onnx, example_shapes(region)):
            log.info("subgraph %s: matrix-vector products only: one thread", name)
            plan[name] = 1
    return plan


def _has_heavy_ops(model: onnx.ModelProto) -> bool:
    return any(n.op_type in HEAVY_OPS for n in all_nodes(model.graph))


def model_threads(model: onnx.ModelProto, threads: int) -> int:
    """`threads` for a heavy model, 1 for a light one (the rule above)."""
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    heavy = any(n.op_type in HEAVY_OPS for n in all_nodes(model.graph))
    return threads if heavy or weights >= HEAVY_WEIGHTS else 1


def export_region_model(region, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """One region as a checked ONNX model; its inputs are the placeholders, in order and by
    name, outputs out0.. (`meta["dynamic"]` must be set: `mark_dynamic`)."""
    phs = region.placeholders
    outs = _output_names(phs, len(region.output_nodes))
    dynamic = [p for p in phs if _is_dynamic(p)]
    axes = {p.name: _input_axes(p) for p in dynamic}
    traced = bool(dynamic) and all(p.meta.get("sym") for p in dynamic)  # the frontend knows
    if dynamic:  # outputs of a region fed shape-varying values may vary too
        axes.update({o: _output_axes(o, n, traced) for o, n in zip(outs, region.output_nodes)})
    axes.update({o: _axes(o, _example(n)) for o, n in zip(outs, region.output_nodes)
                 if isinstance(n, fx.Node) and n.meta.get("sym") and o not in axes})  # x[mask]
    where = ", ".join(region.lines[:3]) or "?"
    start = time.perf_counter()
    try:
        # static shapes, or dynamic ones whose varying dims the frontend traced (`sym`)
        gm = region.gm if dynamic and not traced else lower_for_export(region.gm,
                                                                       bool(dynamic))
        model = _export(gm, tuple(p.meta["example"] for p in phs), [p.name for p in phs],
                        outs, axes, opset)
    except Exception as e:
        raise _ExportFailure(region.name, _diagnose(region, opset) or [
            ("torch.onnx.export", where, _reason(e))]) from e
    log.debug("exported region %s (%d ops) in %.3f s", region.name, region.op_count(),
              time.perf_counter() - start)
    check_region(region, model)
    _all_inputs(model, phs)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise _ExportFailure(region.name, [("onnx.checker", where, _reason(e))]) from e
    _check_symbolic(model, axes, region.name, where)
    _free_rank(model, {p.name for p in dynamic if _rank_varies(p)})
    return model


def _check_symbolic(model: onnx.ModelProto, axes: dict, region: str, where: str) -> None:
    """Every dim that varies (`axes`) is symbolic in the exported model's inputs and
    outputs: one the exporter fixed would hold the example's size at every call."""
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for d in axes.get(value.name, {}):
            if d < len(dims) and dims[d].HasField("dim_value"):
                raise _ExportFailure(region, [(
                    "torch.onnx.export", where, f"dim {d} of {value.name} varies between "
                    f"calls but the exported model fixes it at {dims[d].dim_value}")])


# -- torch.onnx.export ----------------------------------------------------------------------
def _export(gm: fx.GraphModule, args: tuple, inputs: list[str], outputs: list[str],
            axes: dict, opset: int) -> onnx.ModelProto:
    f = io.BytesIO()
    modes = {m: m.training for m in gm.modules()}  # export's eval() + train(orig) loses them
    try:
        with quiet(), torch.no_grad(), no_fastpath():
            torch.onnx.export(gm, args, f, input_names=inputs, output_names=outputs,
                              dynamic_axes=axes or None, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
    finally:
        for m, training in modes.items():
            m.training = training
    model = onnx.load_from_string(f.getvalue())
    bool_wheres(model)  # a kernel ONNX Runtime lacks
    return model


@contextlib.contextmanager
def quiet(fds: tuple[int, ...] = (1,)):
    """Silence a compiler: Python warnings, and what C++ code prints to the file
    descriptors `fds` (the exporter prints the TorchScript IR to stdout when an op fails,
    its logging switch stuck on; TVM prints warnings to stderr), which would otherwise end
    up in a CLI's output. Redirects the descriptors for the duration, so output another
    thread writes meanwhile is lost too."""
    streams = {1: sys.stdout, 2: sys.stderr}
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        for fd in fds:
            stack.enter_context(_redirect(fd, streams.get(fd)))
        yield


@contextlib.contextmanager
def _redirect(fd: int, stream):
    if stream is not None:
        stream.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # nothing to protect
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved, fd)
        os.close(saved)


def _axes(name: str, example) -> dict[int, str]:
    return {i: f"{name}_d{i}" for i in range(getattr(example, "dim", lambda: 0)())}


def _output_axes(name: str, node, traced: bool) -> dict[int, str]:
    """The dims of an output that may vary: when the frontend traced every varying input
    of the region (`dynamic_dims`), those it traced as varying (a `[batch, 10]` output
    keeps its 10, so that fused arms of other widths are not taken for one type); else,
    or for a node a pass made (no `sym` record), all of them."""
    axes = _axes(name, _example(node))
    if not traced or not isinstance(node, fx.Node) or "sym" not in node.meta:
        return axes
    sym = node.meta["sym"]
    if any(d >= len(axes) for d in sym):  # the rank varies
        return axes
    return {d: n for d, n in axes.items() if d in sym}


def _input_axes(ph: fx.Node) -> dict[int, str]:
    """The dimensions of an input that vary: those the frontend traced as symbolic (a
    shrinking beam's rows, not its features: an LSTM cell exports only with a static
    width), else all of them."""
    axes = _axes(ph.name, ph.meta["example"])
    sym = ph.meta.get("sym")
    if sym and not _rank_varies(ph):
        return {d: n for d, n in axes.items() if d in sym}
    return axes


def _example(node):
    return node.meta.get("example") if isinstance(node, fx.Node) else None


def _is_dynamic(ph: fx.Node) -> bool:
    """`mark_dynamic`'s verdict; without one (it cannot run on a graph that already holds
    fused ONNX regions), at least the loop-carried inputs known to vary."""
    return bool(ph.meta.get("dynamic", ph.meta.get("sym")))


def _rank_varies(ph: fx.Node) -> bool:
    """Loop-carried values can change rank (`halting = 0.0` then `halting + p`)."""
    return any(d >= ph.meta["example"].dim() for d in ph.meta.get("sym", ()))


# -- post-processing --------------------------------------------------------------------------
def _all_inputs(model: onnx.ModelProto, phs: list[fx.Node]) -> None:
    """Graph inputs = the region's placeholders, in order: the exporter drops unused ones,
    and the host passes every argument."""
    g = model.graph
    have = {i.name: i for i in g.input}
    inputs = [have.get(p.name) or _value_info(p) for p in phs]
    del g.input[:]
    g.input.extend(inputs)


def _free_rank(model: onnx.ModelProto, names: set) -> None:
    """Drop the shape of inputs whose rank varies between calls, and then of every output
    and intermediate, except outputs whose rank stays fixed (`_ranks`), which keep their
    rank with sizes unknown. ONNX Runtime accepts any shape for such an input;
    `onnx.checker` insists on a shape, so this runs after the check."""
    if not names:
        return
    g = model.graph
    for v in (i for i in g.input if i.name in names):
        v.type.tensor_type.ClearField("shape")
    ranks = _ranks(g)
    for v in g.output:
        v.type.tensor_type.ClearField("shape")
        if v.name in ranks:  # a decision read out of a varying value: 0-d, known so
            v.type.tensor_type.shape.dim.extend(
                onnx.TensorShapeProto.Dimension(dim_param=f"{v.name}_d{i}")
                for i in range(ranks[v.name]))
    del g.value_info[:]


_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Equal", "Less", "LessOrEqual", "Greater",
                "GreaterOrEqual", "And", "Or", "Not", "Cast", "Neg", "Abs", "Sigmoid", "Tanh",
                "Relu", "Where", "Identity"}


def _ranks(g: onnx.GraphProto) -> dict[str, int]:
    """The values whose rank does not depend on the inputs whose shape was dropped:
    constants, inputs that keep a shape, `Reshape` to a constant shape, and elementwise
    ops of those."""
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    ranks = {k: v.ndim for k, v in consts.items()}
    ranks.update((i.name, len(i.type.tensor_type.shape.dim)) for i in g.input
                 if i.type.tensor_type.HasField("shape"))
    for n in g.node:
        if n.op_type == "Reshape" and n.input[1] in consts:
            ranks[n.output[0]] = consts[n.input[1]].size
        elif n.op_type in _ELEMENTWISE and all(x in ranks for x in n.input):
            ranks[n.output[0]] = max(ranks[x] for x in n.input)
    return ranks


def _value_info(ph: fx.Node) -> onnx.ValueInfoProto:
    ex = ph.meta["example"]
    elem = onnx.helper.np_dtype_to_tensor_dtype(torch.empty((), dtype=ex.dtype).numpy().dtype)
    dims = list(_axes(ph.name, ex).values()) if _is_dynamic(ph) else list(ex.shape)
    return onnx.helper.make_tensor_value_info(ph.name, elem, dims)


def _output_names(phs: list[fx.Node], n: int) -> list[str]:
    """out0, out1, ...; prefixed with `_` if an input has such a name."""
    taken, prefix = {p.name for p in phs}, "out"
    while any(f"{prefix}{i}" in taken for i in range(n)):
        prefix = "_" + prefix
    return [f"{prefix}{i}" for i in range(n)]


# -- reporting unsupported ops -----------------------------------------------------------------
def _diagnose(region, opset: int) -> list[tuple[str, str, str]]:
    """Export each call node of a region on its own; (op, line, reason) of those that fail.
    Empty if the region cannot be run on its examples (the caller then reports the region)."""
    try:
        values = _node_values(region)
    except Exception as e:  # diagnosis only: the region-level error is reported instead
        log.debug("cannot run region %s on its examples: %s", region.name, e)
        return []
    failed = []
    for node in region.gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module") or rewritten(node):
            continue
        single = _single_node_module(region.gm, node, values)
        if single is None:
            continue
        gm, args, names, n_out = single
        try:
            _export(gm, args, names, [f"out{i}" for i in range(n_out)], {}, opset)
        except Exception as e:
            failed.append((_op_name(region.gm, node), node.meta.get("line") or "?", _reason(e)))
    return failed


def _node_values(region) -> dict[fx.Node, object]:
    """Every node's value on the region's example inputs."""
    values: dict[fx.Node, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            values[n] = super().run_node(n)
            return values[n]

    with torch.no_grad():
        Recorder(region.gm).run(*[p.meta["example"].clone() for p in region.placeholders])
    return values


def _single_node_module(root: fx.GraphModule, node: fx.Node, values: dict):
    """(GraphModule computing just `node` from placeholders, example args, input names,
    output count), or None when the node's result is not made of tensors."""
    g, args = fx.Graph(), []

    def placeholder(t: torch.Tensor) -> fx.Node:
        args.append(t.clone())
        return g.placeholder(f"in{len(args) - 1}")

    def lift(a: fx.Node):
        v = values.get(a)
        if a.op == "get_attr":
            return g.get_attr(a.target)
        if isinstance(v, torch.Tensor):
            return placeholder(v)
        if isinstance(v, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in v):
            return type(v)(placeholder(x) for x in v)
        return v  # a Python value computed in the region: a constant here

    new = g.create_node(node.op, node.target, *fx.map_arg((node.args, node.kwargs), lift))
    result = values.get(node)
    if isinstance(result, torch.Tensor):
        outs = (new,)
    elif result is None and args:  # in-place op (setitem): its effect is on its first input
        outs = (next(n for n in g.nodes if n.op == "placeholder"),)
    elif (isinstance(result, (tuple, list)) and result
          and all(isinstance(x, torch.Tensor) for x in result)):
        outs = tuple(g.call_function(operator.getitem, (new, i)) for i in range(len(result)))
    else:
        return None
    g.output(outs)
    return fx.GraphModule(root, g), tuple(args), [f"in{i}" for i in range(len(args))], len(outs)


def _op_name(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return f"{type(mod).__module__}.{type(mod).__qualname__} ({node.target})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    try:
        return _get_qualified_name(node.target)
    except Exception:  # builtins without a module path
        return getattr(node.target, "__name__", repr(node.target))


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _unloadable(graph, failed: dict, e: Exception) -> UnsupportedError:
    if not failed:
        return UnsupportedError(f"ONNX Runtime cannot run the exported subgraphs:\n{e}",
                                hint="use backend='torch'")
    return regions_error(graph, failed, "ONNX Runtime cannot run",
                         hint="rewrite the ops named with other dtypes or ops, or use "
                              "backend='torch'")


def regions_error(graph, failed: dict[str, str], what: str, hint: str) -> UnsupportedError:
    """One error for the regions a backend cannot run: a row per region (its source
    lines and the reason), located at the first region's first line."""
    rows = "\n".join(f"  {', '.join(graph.regions[n].lines[:3]) or '?'}: region {n} ({why})"
                     for n, why in failed.items())
    return UnsupportedError(
        f"{what} {len(failed)} region(s):\n{rows}",
        where=next((graph.regions[n].lines[0] for n in failed if graph.regions[n].lines), ""),
        hint=hint)


def _unsupported(failures: list[_ExportFailure], opset: int) -> UnsupportedError:
    ops = [(f.region, op, line, why) for f in failures for op, line, why in f.ops]
    rows = "\n".join(f"  {line}: {op} in region {region} ({why})"
                     for region, op, line, why in ops)
    err = UnsupportedError(
        f"{len(ops)} op{'s' * (len(ops) != 1)} cannot be exported to ONNX (opset {opset}):\n"
        + rows, where=ops[0][2],
        hint="rewrite them with exportable ops, try a newer opset, or use backend='torch'")
    err.ops = ops  # [(region, op, source line, reason)]
    return err
