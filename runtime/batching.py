"""Exact batching of requests to a loaded artifact (numpy only, never torch).

`run_batch(art, requests)` answers a list of requests so that every answer equals the
answer of `art.run(*request)` alone. How depends on the artifact's batching class, which
the compiler stores in the manifest (`batching`, `dycomp/batching.py`; artifacts without
it count as `unbatchable`):

- `unbatchable`, or inputs of fixed shape where concatenation is wanted: one request at
  a time (exact by construction);
- `per-sample` with a dynamic dim 0 on every input (a name string in the signature's
  shape): concatenate the requests, run once, split the outputs by rows;
- `path-split`: the splitting executor (`runtime/batch_split.py`), which runs the host
  program over the group and splits it at each decision by each sample's own outcome;
  one request at a time where every coupled decision is fused into a subgraph (an ONNX
  `If` / `Loop` decides for its whole input) and no subgraph can take a batch.

Regions with a rows variant (`runtime/batch_rows.py`) take a whole group in one call
inside the splitter, also in artifacts of fixed shape (per-sample ones then split too).
"""

from __future__ import annotations

import logging

import numpy as np

from dycomp.runtime.errors import ArtifactError

log = logging.getLogger(__name__)

CLASSES = ("per-sample", "path-split", "unbatchable")
UNBATCHABLE = {"class": "unbatchable", "reasons": ["the artifact records no batching class"],
               "decisions": [], "regions": {}, "subgraphs": {}}
_DECISION_KEYS = {"line": str, "source": str, "kind": str, "coupled": bool, "reason": str,
                  "where": str}


def check_batching(data, subgraphs: dict, where: str) -> dict:
    """The manifest's `batching` field, checked field by field (ArtifactError naming it)."""
    def fail(field: str, what: str):
        raise ArtifactError(f"{where}: batching.{field}: {what}")

    if not isinstance(data, dict) or set(data) - {"class", "reasons", "decisions", "regions",
                                                  "subgraphs"}:
        fail("", "expected an object with class, reasons, decisions, regions, subgraphs")
    if data.get("class") not in CLASSES:
        fail("class", f"{data.get('class')!r} is not one of {', '.join(CLASSES)}")
    if not isinstance(data.get("reasons", []), list) or not all(
            isinstance(r, str) for r in data.get("reasons", [])):
        fail("reasons", "expected a list of strings")
    if not isinstance(data.get("decisions", []), list):
        fail("decisions", "expected a list")
    for i, d in enumerate(data.get("decisions", [])):
        if not isinstance(d, dict) or any(not isinstance(d.get(k), t)
                                          for k, t in _DECISION_KEYS.items()):
            fail(f"decisions[{i}]", f"expected {', '.join(_DECISION_KEYS)}")
    _check_table(data.get("regions", {}), {"rowwise": bool, "reason": str, "scalar": str},
                 None, fail, "regions")
    _check_table(data.get("subgraphs", {}), {"batched": bool, "reason": str}, subgraphs, fail,
                 "subgraphs", optional={"rows_variant": dict})
    for name, entry in data.get("subgraphs", {}).items():
        if "rows_variant" in entry:
            check_variant(entry["rows_variant"], lambda what, n=name: fail(
                f"subgraphs[{n!r}].rows_variant", what))
    return data


def _check_table(table, keys: dict, names, fail, field: str, optional: dict | None = None
                 ) -> None:
    optional = optional or {}
    if not isinstance(table, dict):
        fail(field, "expected an object")
    for name, entry in table.items():
        if names is not None and name not in names:
            fail(f"{field}[{name!r}]", "no such subgraph")
        if not isinstance(entry, dict) or not set(keys) <= set(entry) <= set(keys) | set(
                optional) or any(not isinstance(entry[k], t) for k, t in
                                 (keys | optional).items() if k in entry):
            fail(f"{field}[{name!r}]", "expected {" + ", ".join(
                f"{k}: {t.__name__}" for k, t in keys.items()) + "}")


def check_variant(v: dict, fail) -> None:
    """A `rows_variant` entry (`runtime/batch_rows.py`): {file, inputs, outputs}."""
    from dycomp.runtime.batch_rows import INPUT_KINDS, OUTPUT_KINDS

    if set(v) != {"file", "inputs", "outputs"} or not isinstance(v["file"], str):
        fail("expected {file: str, inputs: list, outputs: list}")
    for key, kinds in (("inputs", INPUT_KINDS), ("outputs", OUTPUT_KINDS)):
        if not isinstance(v[key], list) or not all(k in kinds for k in v[key]):
            fail(f"{key}: expected a list of {', '.join(kinds)}")


def batching_of(art) -> dict:
    """The batching data of an artifact or manifest (`unbatchable` when it has none)."""
    manifest = art if isinstance(art, dict) else getattr(art, "manifest", None)
    data = manifest.get("batching") if isinstance(manifest, dict) else None
    return data if isinstance(data, dict) else UNBATCHABLE


def describe(data: dict) -> str:
    """`batching: path-split (...)` and its reasons, one per line."""
    coupled = sum(d["coupled"] for d in data.get("decisions", []))
    total = len(data.get("decisions", []))
    head = f"batching: {data['class']} ({coupled} of {total} decisions batch-coupled)"
    return "\n".join([head] + [f"  {r}" for r in data.get("reasons", [])[:6]])


def batched_subgraphs(art) -> set[str]:
    """The subgraphs one call may run for a whole group (`batched: true`)."""
    return {n for n, e in batching_of(art).get("subgraphs", {}).items() if e["batched"]}


def dynamic_batch(art) -> bool:
    """Whether every input's dim 0 is a dynamic (named) dimension."""
    sig = getattr(art, "signature", None)
    return sig is not None and bool(sig.inputs) and all(
        spec.shape and isinstance(spec.shape[0], str) for spec in sig.inputs)


def plan(art) -> tuple[str, str]:
    """How `run_batch` runs `art`: ("one" | "concat" | "split", why)."""
    data = batching_of(art)
    kind = data["class"]
    if getattr(getattr(art, "program", None), "data", None) is None:
        return "one", "the artifact has no host program as data"
    variants = any("rows_variant" in e for e in data.get("subgraphs", {}).values())
    if kind == "per-sample":
        if dynamic_batch(art):
            return "concat", "per-sample with a dynamic dim 0"
        if variants:
            return "split", "per-sample with fixed-shape inputs: regions run by rows variants"
        return "one", "per-sample, but its inputs have a fixed shape"
    if kind == "path-split":
        if not any(d["coupled"] and d["where"] == "host" for d in data.get("decisions", [])
                   ) and not (dynamic_batch(art) and batched_subgraphs(art)) and not variants:
            return "one", ("path-split, but its coupled decisions are all fused into "
                           "subgraphs, which run per sample: one request at a time")
        return "split", "batch-coupled decisions: split at each by each sample's outcome"
    return "one", f"{kind}: {'; '.join(data.get('reasons', [])[:1])}"


def run_batch(art, requests: list, return_path: bool = False, errors: str = "raise",
              stats: dict | None = None) -> list:
    """One answer per request, in order; each equals `art.run(*request,
    return_path=return_path)`. `errors="raise"` raises the first failing request's
    exception (in request order); `"return"` puts it in that request's place. `stats`
    (a dict) counts the region calls of a split run: batched_calls (rows variants, each
    for batched_samples in all) and single_calls (one sample each)."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    requests = [tuple(r) for r in requests]
    if not requests:
        return []
    how, why = plan(art)
    log.debug("run_batch: %d requests, %s (%s)", len(requests), how, why)
    if how == "concat":
        answers = _concat(art, requests, return_path)
        if answers is not None:
            return answers
    if how == "split":
        return _finish(_split(art, requests, return_path, stats), errors)
    return _finish([_one(art, r, return_path) for r in requests], errors)


def _one(art, request: tuple, return_path: bool):
    try:
        return art.run(*request, return_path=return_path)
    except Exception as e:
        return _Failed(e)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _finish(answers: list, errors: str) -> list:
    failed = next((a for a in answers if isinstance(a, _Failed)), None)
    if failed is not None and errors == "raise":
        raise failed.error
    return [a.error if isinstance(a, _Failed) else a for a in answers]


def _split(art, requests: list, return_path: bool, stats: dict | None = None) -> list:
    from dycomp.runtime.artifact import check_inputs, exact_inputs
    from dycomp.runtime.batch_rows import rows_variants
    from dycomp.runtime.batch_split import SplitRunner, group_caller

    inputs, answers = [], [None] * len(requests)
    for i, r in enumerate(requests):
        try:
            inputs.append((i, r if exact_inputs(art.signature, r) else tuple(
                check_inputs(art.signature, r))))
        except ValueError as e:
            answers[i] = _Failed(e)
    batched = batched_subgraphs(art) if dynamic_batch(art) else set()
    variants = {n: v for n, v in rows_variants(art).items() if n not in batched}
    runner = SplitRunner(art.program, art.program.data,
                         group_caller(batched, variants=variants, stats=stats),
                         code=_code_cache(art))
    samples = runner.run([r for _, r in inputs], return_path)
    for (i, _), s in zip(inputs, samples):
        if s.exit == "error":
            answers[i] = _Failed(s.value)
        else:
            answers[i] = (s.value, tuple(s.path)) if return_path else s.value
    return answers


def _code_cache(art) -> dict | None:
    """The splitter's compiled expressions, kept with the program whose data they come
    from (compiling them again for every batch cost ~5 % of a policy_net batch)."""
    program = art.program
    cache = getattr(program, "_dycomp_split_code", None)
    if cache is None or cache[0] is not program.data:
        cache = (program.data, {})
        try:
            program._dycomp_split_code = cache
        except AttributeError:
            return None
    return cache[1]


def _concat(art, requests: list, return_path: bool) -> list | None:
    """Requests concatenated along dim 0, run once, outputs split by rows; None (and one
    at a time) where a request does not fit or an output is not split by rows."""
    sig = art.signature
    if any(len(r) != len(sig.inputs) or not all(
            isinstance(a, np.ndarray) and a.dtype == s.dtype and a.ndim == len(s.shape)
            for a, s in zip(r, sig.inputs)) for r in requests):
        log.info("run_batch: a request does not match %s; one at a time", sig)
        return None
    sizes = [r[0].shape[0] for r in requests]
    if any(a.shape[0] != n for r, n in zip(requests, sizes) for a in r):
        return None
    joined = [np.concatenate([r[k] for r in requests]) for k in range(len(sig.inputs))]
    out = art.run(*joined, return_path=return_path)
    value, path = out if return_path else (out, None)
    parts = _split_rows(value, sizes)
    if parts is None:
        log.info("run_batch: an output is not split by rows; one at a time")
        return None
    return [(p, path) if return_path else p for p in parts]


def _split_rows(value, sizes: list) -> list | None:
    total = sum(sizes)
    if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == total:
        cuts = np.cumsum(sizes)[:-1]
        return list(np.split(value, cuts))
    if isinstance(value, (tuple, list)):
        cols = [_split_rows(v, sizes) for v in value]
        if any(c is None for c in cols):
            return None
        return [type(value)(c[i] for c in cols) for i in range(len(sizes))]
    if isinstance(value, dict):
        cols = {k: _split_rows(v, sizes) for k, v in value.items()}
        if any(c is None for c in cols.values()):
            return None
        return [{k: c[i] for k, c in cols.items()} for i in range(len(sizes))]
    return None
