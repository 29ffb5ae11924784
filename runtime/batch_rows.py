"""Rows variants at run time: one call for a group of samples (numpy only, never torch).

A region with a rows variant (manifest `batching.subgraphs[region].rows_variant`, built
by `dycomp/batching_attach.py`) takes its `rows` inputs with any dim 0: row i of every
output is what the region gives for sample i alone, where each sample brings one row
(`scalar` outputs: the sample's 0-d value at index i; `const` outputs: the same for
all). `call_variant` groups the samples whose other arguments agree and whose rows
inputs are one row each of the same trailing shape, runs each group of two or more in
one call, and hands a sample its own slice of each output, shaped as at batch 1. A
sample that fits no group, or a failing call, goes through `call_each`: its own answer
or its own error, as `art.run` would give.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from dycomp.runtime.errors import ArtifactError

log = logging.getLogger(__name__)

INPUT_KINDS = ("rows", "const")
OUTPUT_KINDS = ("rows", "scalar", "const")
_LOCK = threading.Lock()


class RowsVariant:
    """One region's variant: its bound call and the kinds of its inputs and outputs."""

    def __init__(self, call, inputs: list[str], outputs: list[str]):
        self.call, self.inputs, self.outputs = call, inputs, outputs


def variant_files(manifest: dict) -> list[str]:
    """The files of the rows variants a manifest names (sorted; none if it has none)."""
    subs = manifest.get("batching", {}).get("subgraphs", {}) if isinstance(
        manifest.get("batching"), dict) else {}
    return sorted({e["rows_variant"]["file"] for e in subs.values()
                   if isinstance(e, dict) and isinstance(e.get("rows_variant"), dict)
                   and isinstance(e["rows_variant"].get("file"), str)})


def rows_variants(art) -> dict[str, RowsVariant]:
    """The rows variants of a loaded artifact, loaded on first use (and kept on it)."""
    cached = getattr(art, "_dycomp_rows_variants", None)
    if cached is not None:
        return cached
    with _LOCK:
        cached = getattr(art, "_dycomp_rows_variants", None)
        if cached is None:
            cached = _load(art)
            try:
                art._dycomp_rows_variants = cached
            except AttributeError:  # an object that takes no attributes: load each time
                pass
    return cached


def _load(art) -> dict[str, RowsVariant]:
    from dycomp.runtime.batching import batching_of

    entries = {n: e["rows_variant"] for n, e in batching_of(art).get("subgraphs", {}).items()
               if "rows_variant" in e}
    files = getattr(art, "files", None)
    if not entries or not isinstance(files, dict):
        return {}
    from dycomp.runtime.onnx_executor import OnnxExecutor

    missing = [v["file"] for v in entries.values() if v["file"] not in files]
    if missing:
        raise ArtifactError(f"{getattr(art, 'path', '?')}: rows variant {missing[0]} is not "
                            "among the artifact's files")
    subs = getattr(art, "subgraphs", {})
    threads = {n: int(subs.get(n, {}).get("threads", 1)) for n in entries}
    ex = OnnxExecutor({n: files[v["file"]] for n, v in entries.items()}, threads=threads)
    return {n: RowsVariant(_caller(ex, n), v["inputs"], v["outputs"])
            for n, v in entries.items()}


def _caller(ex, region: str):
    return lambda *args: ex(region, *args)


def call_variant(variant: RowsVariant, program, region: str, rows: list[tuple], paths: bool,
                 stats: dict | None = None) -> list:
    """The seam (`batch_split.call_group`) for a region with a rows variant."""
    from dycomp.runtime.batch_split import call_each

    buckets: dict = {}
    for i, args in enumerate(rows):
        buckets.setdefault(_key(args, variant.inputs), []).append(i)
    out: list = [None] * len(rows)
    for key, members in buckets.items():
        group = [rows[i] for i in members]
        answers = _one_call(variant, region, group) if key is not None and len(
            members) > 1 else None
        count_calls(stats, answers is not None, len(members))
        if answers is None:
            answers = call_each(program, region, group, paths)
        for i, a in zip(members, answers):
            out[i] = a
    return out


def count_calls(stats: dict | None, batched: bool, n: int) -> None:
    """Add a batched call of `n` samples, or `n` single calls, to `stats` (if given)."""
    if stats is None:
        return
    if batched:
        stats["batched_calls"] = stats.get("batched_calls", 0) + 1
        stats["batched_samples"] = stats.get("batched_samples", 0) + n
    else:
        stats["single_calls"] = stats.get("single_calls", 0) + n


def _key(args: tuple, kinds: list[str]):
    """Samples with equal keys run together; None: this sample runs alone."""
    if len(args) != len(kinds):
        return None
    key = []
    for a, kind in zip(args, kinds):
        if kind == "rows":
            if type(a) is not np.ndarray or not a.ndim or a.shape[0] != 1:
                return None
            key.append((a.dtype.str, a.shape[1:]))
        elif isinstance(a, np.ndarray):
            key.append(("array", a.dtype.str, a.shape, a.tobytes()))
        else:
            key.append(("value", type(a).__name__, repr(a)))
    return tuple(key)


def _one_call(variant: RowsVariant, region: str, group: list[tuple]) -> list | None:
    joined = tuple(np.concatenate([args[k] for args in group]) if kind == "rows"
                   else group[0][k] for k, kind in enumerate(variant.inputs))
    try:
        values = variant.call(*joined)
    except Exception as e:  # each sample then runs alone and gets its own answer or error
        log.debug("rows variant of %s failed (%s); one sample at a time", region, e)
        return None
    n = len(group)
    if len(values) != len(variant.outputs) or not all(
            isinstance(v, np.ndarray) and (kind == "const" or (v.ndim and v.shape[0] == n))
            for v, kind in zip(values, variant.outputs)):
        return None
    return [(tuple(_part(v, kind, i) for v, kind in zip(values, variant.outputs)), [region])
            for i in range(n)]


def _part(v: np.ndarray, kind: str, i: int) -> np.ndarray:
    if kind == "rows":
        return v[i:i + 1]
    if kind == "scalar":
        return v[i, ...]
    return v.copy()
