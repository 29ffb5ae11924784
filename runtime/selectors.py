"""One model, many sub-networks chosen at call time (numpy and onnxruntime only, never torch).

A model compiled with `selectors` (`dycomp.selectors`) is one compiled sub-network per
combination of declared values. `Selected` dispatches a call among them: an *argument*
selector by the value of a keyword argument (`m(x, width=0.5)`), a *method* selector by
the last call of the model's setter (`m.set_active_subnet(ks=3, e=3, d=2)`, then `m(x)`;
the first declared call until then). The choice is state of the object: threads that
share one must not change its method selectors concurrently.

Saved, it is one artifact directory: `manifest.json` (`"kind": "selectors"`: the
declarations, a table of sub-networks with their parameter counts and measured
latencies), `weights.bin` (every large tensor of every sub-network, once per distinct
bytes: `dycomp.runtime.shared_weights`) and `subnets/<i>/`, each an ordinary artifact
whose ONNX tensors refer to `weights.bin`.
"""

from __future__ import annotations

import json
import mmap
import os
import statistics
import time
from pathlib import Path

from dycomp.runtime import trust
from dycomp.runtime.artifact import (
    DEFAULT_LIVE,
    MANIFEST,
    Artifact,
    _check_path,
    parse_manifest,
    read_optional,
    sha256,
    verify_files,
)
from dycomp.runtime.batch_rows import variant_files
from dycomp.runtime.errors import ArtifactError
from dycomp.runtime.live_pool import LivePool, is_live
from dycomp.runtime.shared_weights import WEIGHTS, check_refs, inline

KIND = "selectors"


def call_key(method: str, args, kwargs: dict) -> str:
    """A method selector's call as a canonical string (JSON: 1 and 1.0 differ)."""
    return json.dumps([method, list(args), kwargs], sort_keys=True)


def describe(selector: dict, value) -> str:
    """`width=0.5` or `set_active_subnet(ks=3, e=3)` for reports and errors."""
    if selector["kind"] == "argument":
        return f"{selector['name']}={value!r}"
    method, args, kwargs = value
    inner = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{method}({', '.join(inner)})"


class Selected:
    """Dispatch among sub-networks (`subnets`: key -> model; a key holds, per selector,
    the index of its value). `latency`: key -> median milliseconds, once measured."""

    def __init__(self, selectors: list[dict], subnets: dict, params: dict,
                 latency: dict | None = None, max_live: int | None = DEFAULT_LIVE):
        self.selectors, self.subnets, self.params = selectors, subnets, params
        self._pool = LivePool(max_live)  # sub-networks allowed live sessions (LRU)
        self._hot = None  # the key of the last sub-network called
        self.latency = dict(latency or {})
        self._state = [0] * len(selectors)  # method selectors: index of the last call
        self._args = [(i, s["name"], _index(s["values"]), s["values"])
                      for i, s in enumerate(selectors) if s["kind"] == "argument"]
        self._setters: dict[str, tuple[int, dict]] = {}
        for i, s in enumerate(selectors):
            if s["kind"] == "method":
                calls = {call_key(*v): j for j, v in enumerate(s["values"])}
                for method, _, _ in s["values"]:
                    self._setters[method] = (i, calls)

    # -- choosing ---------------------------------------------------------------------------
    def _pick(self, kwargs: dict) -> tuple:
        """The key of the sub-network a call selects; pops the selector keywords."""
        key = list(self._state)
        for i, name, index, values in self._args:
            if name not in kwargs:
                raise ValueError(f"missing selector argument {name}=... (pass it by "
                                 f"keyword); declared values: {values}")
            v = kwargs.pop(name)
            try:
                j = index.get(v)
            except TypeError:  # unhashable
                j = None
            if j is None or type(values[j]) is not type(v):
                raise ValueError(f"{name}={v!r} is not a declared value of selector {name!r};"
                                 f" declared values: {values}")
            key[i] = j
        return tuple(key)

    def __getattr__(self, name: str):
        setters = self.__dict__.get("_setters", {})
        if name not in setters:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        i, calls = setters[name]

        def setter(*args, **kwargs):
            j = calls.get(call_key(name, args, kwargs))
            if j is None:
                raise ValueError(f"{describe(self.selectors[i], (name, args, kwargs))} is not"
                                 f" a declared call of selector {self.selectors[i]['name']!r};"
                                 f" declared: {self.choices(i)}")
            self._state[i] = j
        setter.__name__ = name
        return setter

    def choices(self, i: int) -> list[str]:
        s = self.selectors[i]
        return [describe(s, v) for v in s["values"]]

    def label(self, key: tuple) -> str:
        """The sub-network `key` as its selector values, e.g. `width=0.5`."""
        return ", ".join(describe(s, s["values"][j]) for s, j in zip(self.selectors, key))

    def values(self, key: tuple) -> dict:
        """{selector name: declared value} of the sub-network `key`."""
        return {s["name"]: s["values"][j] for s, j in zip(self.selectors, key)}

    def choose(self, texts: dict[str, str]) -> tuple:
        """The key of the sub-network named by text values (`dycomp run --arg width=0.5`):
        an argument's value as written in JSON or Python, a setter call by its position in
        the declaration (from 0) or as written by `describe`. ValueError otherwise."""
        unknown = set(texts) - {s["name"] for s in self.selectors}
        if unknown:
            raise ValueError(f"no selector named {', '.join(sorted(unknown))}; this model "
                             f"declares {', '.join(s['name'] for s in self.selectors)}")
        key = []
        for i, s in enumerate(self.selectors):
            if s["name"] not in texts:
                raise ValueError(f"choose {s['name']}=...: one of {self.choices(i)}")
            text = texts[s["name"]]
            names = [[json.dumps(v), repr(v), str(j), describe(s, v)]
                     for j, v in enumerate(s["values"])]
            found = [j for j, alias in enumerate(names) if text in alias[:2]] or [
                j for j, alias in enumerate(names)
                if text in alias[2:] and s["kind"] == "method"]
            if not found:
                raise ValueError(f"{s['name']}={text} is not declared; one of "
                                 f"{self.choices(i)}")
            key.append(found[0])
        return tuple(key)

    # -- running ----------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        key = self._pick(kwargs)
        if key != self._hot:
            self._use(key)
        return self.subnets[key](*args, **kwargs)

    def run(self, *args, return_path: bool = False, **kwargs):
        key = self._pick(kwargs)
        self._use(key)
        return self.subnets[key].run(*args, return_path=return_path, **kwargs)

    def _use(self, key: tuple) -> None:
        """`key` runs next: the most recently used; sub-networks beyond `max_live_subnets`
        release their sessions (they create them again when next called)."""
        self._hot = key
        self._pool.use(key, self.subnets[key])

    @property
    def max_live_subnets(self) -> int | None:
        return self._pool.limit

    def live(self) -> list[tuple]:
        """The keys of the sub-networks holding live ONNX Runtime sessions."""
        return [k for k, m in self.subnets.items() if is_live(m)]

    def measure(self, *inputs, repeat: int = 30, warmup: int = 3) -> dict[str, float]:
        """Median milliseconds of one call of every sub-network on `inputs`; stored in
        `latency` (and in the artifact when saved). Returns {label: ms}."""
        saved = list(self._state)
        try:
            for key in self.subnets:
                self._state = list(key)
                kwargs = {name: values[key[i]] for i, name, _, values in self._args}
                times = []
                for n in range(warmup + repeat):
                    t0 = time.perf_counter()
                    self(*inputs, **kwargs)
                    if n >= warmup:
                        times.append(time.perf_counter() - t0)
                self.latency[key] = statistics.median(times) * 1e3
        finally:
            self._state = saved
        return {self.label(k): ms for k, ms in self.latency.items()}

    def select(self, budget_ms: float) -> dict:
        """The selector values of the largest declared sub-network (most parameters) whose
        measured median latency fits `budget_ms`."""
        if not self.latency:
            raise ValueError("no latency table: call measure() first (it is saved with the "
                             "artifact)")
        fits = [k for k, ms in self.latency.items() if ms <= budget_ms]
        if not fits:
            fastest = min(self.latency, key=self.latency.get)
            raise ValueError(f"no sub-network runs within {budget_ms} ms; the fastest, "
                             f"{self.label(fastest)}, takes {self.latency[fastest]:.3f} ms")
        return self.values(max(fits, key=lambda k: (self.params.get(k, 0), -self.latency[k])))

    def table(self) -> str:
        """One line per sub-network: its selector values, parameters and latency."""
        rows = []
        for key in self.subnets:
            ms = self.latency.get(key)
            rows.append(f"  {self.label(key)}: {self.params.get(key, '?')} params, "
                        f"{'not measured' if ms is None else f'{ms:.3f} ms'}")
        return "\n".join([f"{len(self.subnets)} sub-networks:", *rows])


def _index(values: list) -> dict:
    try:
        return {v: j for j, v in enumerate(values)}
    except TypeError:
        raise ArtifactError(f"selector values {values!r} must be hashable") from None


# -- loading -------------------------------------------------------------------------------
def is_selected(raw: bytes) -> bool:
    """Whether manifest bytes describe a model with selectors."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == KIND


def load_selected(root: Path, raw: bytes, threads: int = 2, *, consented: bool = False,
                  max_live: int | None = DEFAULT_LIVE) -> Selected:
    """Load the artifact at `root` whose (already signature-checked) manifest is `raw`:
    weights.bin memory-mapped once, every sub-network's sessions created on its first
    call, at most `max_live` sub-networks' alive."""
    manifest, parts = verify_selected(root, raw)
    weights = parts.pop(WEIGHTS, b"")
    subnets, params, latency = {}, {}, {}
    for entry in manifest["subnets"]:
        key, (sub_root, sub, sub_files) = tuple(entry["key"]), parts[entry["dir"]]
        trust.require_consent(sub_root, sub, consented)
        for s in sub["subgraphs"].values():
            if s.get("backend", "onnx") == "onnx":
                check_refs(sub_files[s["file"]], len(weights), f"{sub_root / s['file']}")
        for f in variant_files(sub):  # rows variants: stored stripped too, put back now
            if f in sub_files:
                sub_files[f] = inline(sub_files[f], weights, f"{sub_root / f}")
        subnets[key] = Artifact(sub_root, sub, sub_files, threads, weights=weights)
        params[key] = entry.get("params", 0)
        if entry.get("latency_ms") is not None:
            latency[key] = entry["latency_ms"]
    return Selected(manifest["selectors"], subnets, params, latency, max_live=max_live)


def verify_selected(root: Path, raw: bytes) -> tuple[dict, dict]:
    """The top manifest and, checked against their sha256, the weight store (under
    WEIGHTS) and per sub-network folder its (root, manifest, files)."""
    manifest = json.loads(raw.decode("utf-8"))
    for field, ty in (("selectors", list), ("subnets", list), ("files", dict)):
        if not isinstance(manifest.get(field), ty):
            raise ArtifactError(f"{root / MANIFEST}: field {field!r} is missing or not a "
                                f"{ty.__name__}")
    files = _verified(root, manifest["files"])
    parts = {WEIGHTS: files.get(WEIGHTS, b"")}
    for entry in manifest["subnets"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("dir"), str):
            raise ArtifactError(f"{root / MANIFEST}: malformed sub-network entry {entry!r}")
        sub_dir = entry["dir"]
        raw_sub = files.get(f"{sub_dir}/{MANIFEST}")
        if raw_sub is None:
            raise ArtifactError(f"{root / MANIFEST}: {sub_dir}/{MANIFEST} is not in its files")
        sub = parse_manifest(root / sub_dir, raw_sub)
        parts[sub_dir] = root / sub_dir, sub, verify_files(root / sub_dir, sub)
    return manifest, parts


def _verified(root: Path, listed: dict) -> dict[str, bytes]:
    """The top manifest's files (the store and each sub-network's manifest), hashed."""
    files = {}
    for rel, digest in listed.items():
        data = _mapped(root, rel) if rel == WEIGHTS else read_optional(root, rel)
        if data is None:
            raise ArtifactError(f"{root / rel}: file is missing")
        if sha256(data) != digest:
            raise ArtifactError(f"{root / rel}: sha256 mismatch ({len(data)} bytes; the file "
                                "was modified or truncated after saving)")
        files[rel] = data
    return files


def _mapped(root: Path, rel: str):
    """The file `rel` memory-mapped read-only (pages read when touched, shared), b"" when
    empty, None when missing."""
    target = _check_path(root, rel, rel)  # inside the artifact
    if not target.is_file():
        return read_optional(root, rel)  # None, or why it cannot be read
    with open(target, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
