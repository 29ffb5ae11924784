"""Build, check and export the rows variants of a compiled model's regions
(`dycomp/batching_variant.py`), and record them in its `Batching`.

For every region left on the host after lowering (not fused), row-wise, called with
the same input states everywhere, and not already batched (`batched: true` needs a
dynamic dim 0): the variant is built, checked in torch at batch 5, exported with a
dynamic dim 0, checked again in ONNX Runtime at batch 5 and 2 against the original
region run on each row alone, and stored as `subgraphs/<region>.rows.onnx`. A failure
costs that region its variant (the reason goes to the manifest), never the compile.
Run when the model is saved (`dycomp/artifact.py`: only an artifact runs them). Costs:
the export and checks (multi_exit unfused: 1.6 s, as much as its compile) and a copy of
the region's weights in the artifact; `DYCOMP_ROWS_VARIANTS=0` builds none.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import torch

from dycomp.batching import Batching
from dycomp.batching_variant import (
    _CHECK_SIZES,
    NoVariant,
    build_variant,
    check_torch,
    compare,
    joined,
    references,
    sample_rows,
)

log = logging.getLogger(__name__)


def attach_rows_variants(b: Batching, graph, dynamic: bool = False, executor=None,
                         opset: int | None = None) -> Batching:
    """`b` with a rows variant per eligible region of the lowered `graph` (`dynamic`: the
    model takes a dynamic dim; then a `batched` region needs none). `executor` (the
    compiled model's `OnnxExecutor`, `executor(region, *arrays)`): the regions as they
    are saved, which the variants must reproduce row by row."""
    if b.kind == "unbatchable" or os.environ.get("DYCOMP_ROWS_VARIANTS") == "0":
        return b
    for name, region in graph.regions.items():
        entry = b.subgraphs.get(name)
        if entry is None or (entry["batched"] and dynamic) or region.gm is None or (
                region.fused):
            continue
        if not b.regions.get(name, {}).get("rowwise"):
            continue
        why = _attach(b, name, region, entry, opset, executor)
        if why:
            log.debug("region %s: no rows variant: %s", name, why)
            entry["reason"] = "; ".join(r for r in (entry["reason"], f"no rows variant: {why}")
                                        if r)
    return b


def _attach(b: Batching, name: str, region, entry: dict, opset, executor) -> str:
    calls = b.region_inputs.get(name, set())
    if len(calls) != 1:
        return "its calls pass inputs of different kinds" if calls else "it is never called"
    try:
        saved = None if executor is None else (lambda *a, n=name: executor(n, *a))
        data, kinds = variant_model(region.gm, list(next(iter(calls))), opset, saved)
    except NoVariant as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a failure costs the variant, not the compile
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    path = f"subgraphs/{name}.rows.onnx"
    b.files[path] = data
    entry["rows_variant"] = {"file": path, **kinds}
    return ""


def variant_model(gm, inputs: list, opset: int | None = None, saved=None
                  ) -> tuple[bytes, dict]:
    """The checked rows variant of `gm` as ONNX bytes, and its kinds; raises NoVariant.
    `saved(*arrays)`: the region as exported, run on one row; the exported variant must
    equal it per row (so weights changed since the export, say, cost the variant)."""
    from dycomp.backends.onnx_backend import DEFAULT_OPSET, _export, lower_for_export

    variant, kinds = build_variant(gm, inputs)
    if "rows" not in kinds["inputs"]:
        raise NoVariant("no input holds rows")
    rows = sample_rows(gm, kinds, max(_CHECK_SIZES))
    refs = references(gm, rows)
    check_torch(gm, variant, kinds, rows, refs)
    phs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    outs = [f"out{i}" for i in range(len(kinds["outputs"]))]
    axes = {n: {0: "batch"} for n, k in zip(phs, kinds["inputs"]) if k == "rows"}
    axes.update({n: {0: "batch"} for n, k in zip(outs, kinds["outputs"]) if k != "const"})
    model = _export(lower_for_export(variant, dynamic=True), joined(rows, kinds), phs,
                    outs, axes, opset or DEFAULT_OPSET)
    _keep_inputs(model, gm, kinds)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if saved is not None:
        refs = [tuple(saved(*[_array(a) for a in row])) for row in rows]
    _check_onnx(data, phs, kinds, rows, refs)
    return data, kinds


def _check_onnx(data: bytes, names: list, kinds: dict, rows: list, refs: list) -> None:
    """The variant in a session made as the runtime makes it, at each check size."""
    from dycomp.runtime.onnx_executor import new_session

    sess = new_session(data, 1)
    for n in _CHECK_SIZES:
        feed = {k: _array(v) for k, v in zip(names, joined(rows[:n], kinds))}
        compare(sess.run(None, feed), refs[:n], kinds, f"onnx at batch {n}")


def _array(v) -> np.ndarray:
    return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _keep_inputs(model: onnx.ModelProto, gm, kinds: dict) -> None:
    """Graph inputs = the region's placeholders, in order (the exporter drops unused ones;
    the runtime passes every argument), rows inputs with a dynamic dim 0."""
    g = model.graph
    have = {i.name: i for i in g.input}
    inputs = []
    for p, kind in zip([n for n in gm.graph.nodes if n.op == "placeholder"], kinds["inputs"]):
        if p.name in have:
            inputs.append(have[p.name])
            continue
        ex = p.meta["example"]
        elem = onnx.helper.np_dtype_to_tensor_dtype(_array(ex[:0] if ex.dim() else ex).dtype)
        dims = ["batch", *ex.shape[1:]] if kind == "rows" else list(ex.shape)
        inputs.append(onnx.helper.make_tensor_value_info(p.name, elem, dims))
    del g.input[:]
    g.input.extend(inputs)
