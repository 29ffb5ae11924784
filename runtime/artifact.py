"""Loading and running a saved dycomp artifact (numpy + onnxruntime/TVM only, never torch).

An artifact is a directory: `manifest.json` (format, versions, entry signature, control-flow
graph, subgraph table, sha256 of every other file), `subgraphs/<region>.onnx` (regions run
by ONNX Runtime), `subgraphs/regions.so` (backend tvm: one library, a function per region)
and `host.py` (the synthesized host program, a readable copy); optionally `signature.json`
(an Ed25519 signature over manifest.json, see `dycomp.runtime.trust`). `load()` verifies
every file before anything runs, opens only the files the manifest lists (all inside the
directory), and loads native code only with the caller's consent. The host program that
runs is the manifest's `host_program`: data that the runtime checks and prints Python from
with its own generator (`runtime/hostcode.py`); `host.py` is never executed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dycomp.runtime import trust
from dycomp.runtime.batching import batching_of, check_batching
from dycomp.runtime.batching import describe as describe_batching
from dycomp.runtime.controlflow import check_fused, manifest_view
from dycomp.runtime.errors import ArtifactError
from dycomp.runtime.host import HostProgram, RoutingExecutor

FORMAT = "dycomp-artifact"
# 2: fused subgraphs saved traced ("ran": the regions their ids name); 3: the host program
# is data (`host_program`), host.py a copy never run
FORMAT_VERSION = 3
READS_VERSIONS = (3,)
MANIFEST = "manifest.json"
HOST = "host.py"
BACKENDS = ("onnx", "tvm")
TVM_LIBRARY = "subgraphs/regions.so"  # every TVM-compiled region is a function in it


@dataclass(frozen=True)
class TensorSpec:
    """One flat tensor input of the entry point: name, numpy dtype, fixed shape."""

    name: str
    dtype: np.dtype
    shape: tuple

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype.name}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class Signature:
    """The tensor inputs the artifact takes, in order (baked Python values are not inputs).
    A dynamic dim is its name in place of the size (`x: float32[batch, 3, 32, 32]`); one
    name on several inputs means one size."""

    inputs: tuple

    @property
    def dynamic(self) -> bool:
        """Whether any dim takes any size."""
        return any(isinstance(d, str) for s in self.inputs for d in s.shape)

    def __str__(self) -> str:
        return "(" + ", ".join(map(str, self.inputs)) + ")"


def sha256(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


# A model with selectors: how many sub-networks keep live sessions by default (all of a
# small supernet; SN-Net's 71 stitch ids: the 8 most recently called).
DEFAULT_LIVE = 8


def load(path, threads: int = 2, *, trust_native: bool = False, public_key=None,
         max_live_subnets: int | None = DEFAULT_LIVE) -> Artifact:
    """Verify and load the artifact directory at `path`; raises ArtifactError if anything
    is missing, truncated, tampered with or of an unknown format version.

    `public_key` (an Ed25519 public key: PEM file path, PEM bytes or key object) requires a
    valid `signature.json` by that key over the manifest. An artifact with native code (a
    TVM `regions.so`) loads only with `trust_native=True` or a verified signature.
    A model compiled with selectors loads as a `dycomp.runtime.selectors.Selected`: its
    weights.bin memory-mapped, each sub-network's sessions created on its first call, at
    most `max_live_subnets` sub-networks' alive (None: all)."""
    root = Path(path)
    raw = manifest_bytes(root)
    if public_key is not None:
        trust.verify(root, raw, read_optional(root, trust.SIGNATURE), public_key)
    from dycomp.runtime import selectors  # a model with selectors: many sub-networks

    if selectors.is_selected(raw):
        return selectors.load_selected(root, raw, threads,
                                       consented=trust_native or public_key is not None,
                                       max_live=max_live_subnets)
    manifest = parse_manifest(root, raw)
    trust.require_consent(root, manifest, trust_native or public_key is not None)
    files = verify_files(root, manifest)
    return Artifact(root, manifest, files, threads)


def sign(path, private_key) -> dict:
    """Check the artifact at `path` (format, every file's sha256, paths) and sign its
    manifest with the Ed25519 private key in the PEM file `private_key`: writes
    `signature.json` and returns its content."""
    root = Path(path)
    raw = manifest_bytes(root)
    from dycomp.runtime import selectors  # a model with selectors: its files checked too

    if selectors.is_selected(raw):
        selectors.verify_selected(root, raw)
    else:
        verify_files(root, parse_manifest(root, raw))
    return trust.sign(root, private_key, raw)


def read_manifest(root: Path) -> dict:
    """The parsed manifest, after checking its format name and version."""
    return parse_manifest(root, manifest_bytes(root))


def manifest_bytes(root: Path) -> bytes:
    """The bytes of `root`'s manifest.json (what a signature covers)."""
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a dycomp artifact directory (no such directory)")
    data = read_optional(root, MANIFEST)
    if data is None:
        raise ArtifactError(f"{root}: {MANIFEST} is missing; not a dycomp artifact")
    return data


def read_optional(root: Path, rel: str) -> bytes | None:
    """A file at a fixed name in the artifact (manifest.json, signature.json), or None if
    there is none; it too must not lead outside the artifact."""
    try:
        return _read(root, rel, rel)
    except _Missing:
        return None


def parse_manifest(root: Path, raw: bytes) -> dict:
    """The manifest parsed from `raw`, after checking its format name and version."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"{root / MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{root / MANIFEST}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version in (1, 2):
        raise ArtifactError(f"{root}: format_version {version} stores the host program as "
                            "Python code, which this dycomp does not run; recompile the model "
                            "and save it again")
    if version not in READS_VERSIONS:
        raise ArtifactError(f"{root}: unsupported format_version {version!r}; this dycomp "
                            f"reads format_version {', '.join(map(str, READS_VERSIONS))}")
    _require(manifest, root, files=dict, subgraphs=dict, inputs=list, backend=str,
             host_program=dict)
    if "fused" in manifest:
        check_fused(manifest["fused"], manifest["subgraphs"], str(root / MANIFEST))
    if "batching" in manifest:
        check_batching(manifest["batching"], manifest["subgraphs"], str(root / MANIFEST))
    if manifest["backend"] not in BACKENDS:
        raise ArtifactError(f"{root}: backend {manifest['backend']!r} cannot be run here; "
                            f"this dycomp runs {', '.join(BACKENDS)} artifacts")
    return manifest


def _require(manifest: dict, root: Path, **types) -> None:
    for key, ty in types.items():
        if not isinstance(manifest.get(key), ty):
            raise ArtifactError(f"{root / MANIFEST}: field {key!r} is missing or not a "
                                f"{ty.__name__}")


def verify_files(root: Path, manifest: dict) -> dict[str, bytes]:
    """Contents of every file the manifest lists, each checked against its sha256; the
    loader opens no other file. Every path must stay inside the artifact."""
    needed = {HOST: "host"}
    for name, sub in manifest["subgraphs"].items():
        needed[_subgraph_file(root, name, sub)] = f"subgraphs[{name!r}].file"
    for rel, field in needed.items():
        _check_path(root, rel, field)
    files = {}
    for rel, digest in manifest["files"].items():
        try:
            data = _read(root, rel, f"files[{rel!r}]")
        except _Missing:
            raise ArtifactError(f"{root / rel}: file is missing") from None
        if sha256(data) != digest:
            raise ArtifactError(f"{root / rel}: sha256 mismatch ({len(data)} bytes; the file "
                                f"was modified or truncated after saving)")
        files[rel] = data
    unlisted = [f for f in needed if f not in files]
    if unlisted:
        raise ArtifactError(f"{root}: {', '.join(unlisted)} not listed in the manifest's files")
    return files


class _Missing(Exception):
    """A file the manifest names does not exist."""


_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def _check_path(root: Path, rel, field: str) -> Path:
    """The file `rel` names inside `root`: a plain relative POSIX path (no absolute path,
    '..', '.', empty part, backslash or drive) that, with every symlink resolved, stays
    inside the artifact. ArtifactError naming the manifest field otherwise."""
    where = f"{root / rel}" if field == rel else f"{root / MANIFEST}: {field}"
    if not isinstance(rel, str) or not _PLAIN_PATH.match(rel) or any(
            part in (".", "..") for part in rel.split("/")):
        raise ArtifactError(f"{where}: file path {rel!r} leaves the artifact or is not a "
                            "plain relative path (like subgraphs/r0.onnx)")
    base = root.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise ArtifactError(f"{where}: {rel!r} is a symlink, or lies in a symlinked "
                            f"directory, that leaves the artifact (it resolves to {target})")
    return target


def _read(root: Path, rel, field: str) -> bytes:
    target = _check_path(root, rel, field)
    if not target.exists():
        raise _Missing(rel)
    if not target.is_file():
        raise ArtifactError(f"{root / rel}: not a regular file ({field})")
    try:
        return target.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{root / rel}: cannot be read ({e})") from None


def _subgraph_file(root: Path, name: str, sub) -> str:
    if not isinstance(sub, dict) or not isinstance(sub.get("file"), str):
        raise ArtifactError(f"{root / MANIFEST}: subgraph {name!r} has no file")
    return sub["file"]


def _np_dtype(name: str, where: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise ArtifactError(f"{where}: dtype {name!r} has no numpy equivalent") from None


def signature_of(manifest: dict) -> Signature:
    """The entry signature recorded in the manifest (tensor leaves only)."""
    specs = []
    for leaf in manifest["inputs"]:
        if not isinstance(leaf, dict) or not isinstance(leaf.get("name"), str):
            raise ArtifactError(f"manifest: malformed input entry {leaf!r}")
        if "dtype" in leaf:
            dtype = _np_dtype(leaf["dtype"], f"input {leaf['name']}")
            specs.append(TensorSpec(leaf["name"], dtype, _shape(leaf)))
    return Signature(tuple(specs))


def _shape(leaf: dict) -> tuple:
    """An input's shape: sizes, and names of dynamic dims."""
    shape = leaf.get("shape", ())
    if not isinstance(shape, list) or not all(
            isinstance(d, str) and d.isidentifier() or type(d) is int and d >= 0 for d in shape):
        raise ArtifactError(f"manifest: input {leaf['name']} has a malformed shape {shape!r}")
    return tuple(shape)


class Artifact:
    """A loaded artifact: call it with numpy arrays (the flat tensor inputs, in signature
    order) to get numpy outputs. Thread-safe: every call has its own host state."""

    def __init__(self, root: Path, manifest: dict, files: dict[str, bytes], threads: int = 2,
                 weights=None):
        self.path, self.manifest, self.files = root, manifest, files
        # the store its ONNX files' stripped tensors refer to; their sessions then are
        # created on first call (`dycomp.runtime.shared_sessions`)
        self.weights = weights
        self.signature = signature_of(manifest)
        lines = {n: ", ".join(s.get("lines", [])[:2]) for n, s in self.subgraphs.items()}
        # checked and printed before any subgraph is loaded
        self.program = HostProgram.from_data(manifest["host_program"], None, lines,
                                             regions=self.subgraphs)
        self.program.executor = self._executor(threads)
        self.host_source = self.program.source  # what runs; host.py is a copy for reading

    def _executor(self, threads: int):
        """One executor per backend the subgraphs use, behind one router if both are."""
        by_backend: dict[str, dict[str, dict]] = {}
        for name, sub in self.subgraphs.items():
            backend = sub.get("backend", "onnx")
            if backend not in BACKENDS:
                raise ArtifactError(f"{self.path}: subgraph {name} has unknown backend "
                                    f"{backend!r}")
            by_backend.setdefault(backend, {})[name] = sub
        routes = {}
        if "onnx" in by_backend:
            subs = by_backend["onnx"]
            plan = {n: min(threads, int(s.get("threads", threads)))
                    for n, s in subs.items()}  # the compile-time plan, within budget
            models, traced = {}, {}
            for n, s in subs.items():
                models[n] = self.files[s["file"]]
                if "ran" in s:  # saved traced: run it without the path output
                    traced[n] = models[n], _region_names(s["ran"], f"{self.path}: {n}")
                    models[n] = _without_path(models[n], f"{self.path / s['file']}")
            ex = self._onnx_executor(models, plan, traced)
            routes.update(dict.fromkeys(subs, ex))
        if "tvm" in by_backend:
            from dycomp.runtime.tvm_executor import TvmExecutor  # TVM: only on load

            subs = by_backend["tvm"]
            libraries = {s["file"] for s in subs.values()}
            if len(libraries) != 1:
                raise ArtifactError(f"{self.path}: TVM subgraphs name {len(libraries)} "
                                    "libraries; a dycomp artifact has one")
            try:
                signatures = {n: ([np.dtype(v["dtype"]) for v in s["inputs"]],
                                  len(s["outputs"])) for n, s in subs.items()}
            except (KeyError, TypeError) as e:
                raise ArtifactError(f"{self.path}: malformed TVM subgraph signature ({e})"
                                    ) from None
            ex = TvmExecutor(self.files[libraries.pop()], signatures, threads=threads)
            routes.update(dict.fromkeys(subs, ex))
        executors = set(routes.values())
        return executors.pop() if len(executors) == 1 else RoutingExecutor(routes)

    def _onnx_executor(self, models: dict, plan: dict, traced: dict):
        from dycomp.runtime.onnx_executor import OnnxExecutor  # onnxruntime: only on load

        if self.weights is None:
            return OnnxExecutor(models, threads=plan, traced=traced)
        from dycomp.runtime.shared_sessions import LazyOnnxExecutor

        return LazyOnnxExecutor(models, threads=plan, traced=traced, weights=self.weights,
                                where=f"{self.path}: ")

    def own_files(self) -> dict[str, bytes]:
        """Its files as a stand-alone artifact holds them (weights put back)."""
        if self.weights is None:
            return dict(self.files)
        from dycomp.runtime.shared_weights import inline_files

        return inline_files(self.manifest, self.files, self.weights, str(self.path))

    @property
    def batching(self) -> dict:
        """The batching class and its reasons (`runtime/batching.py`; artifacts saved
        without one: `unbatchable`)."""
        return batching_of(self)

    @property
    def subgraphs(self) -> dict[str, dict]:
        """Per region: file, typed inputs/outputs, source lines, op and parameter counts."""
        return self.manifest["subgraphs"]

    def __call__(self, *arrays, return_path: bool = False):
        if not return_path and exact_inputs(self.signature, arrays):
            return self.program.run(*arrays)
        return self.run(*arrays, return_path=return_path)

    def run(self, *arrays, return_path: bool = False):
        """Run the host program on numpy inputs; with return_path also the subgraphs run."""
        if not exact_inputs(self.signature, arrays):
            arrays = check_inputs(self.signature, arrays)
        return (self.program.run_path if return_path else self.program.run)(*arrays)

    def explain(self) -> str:
        """Readable summary: entry point, subgraph table and host program."""
        m, s = self.manifest, self.manifest.get("stats", {})
        view = manifest_view(m)
        head = (f"dycomp artifact {self.path}: {m.get('method')} ({m.get('source')}) for "
                f"backend {m['backend']}: {len(self.subgraphs)} subgraphs, "
                f"{view.counts()}, {s.get('returns', '?')} returns\nentry {self.signature}"
                + "".join(f"\noptimized: {o}" for o in m.get("optimizations", [])))
        rows = [_region_row(n, sub) for n, sub in self.subgraphs.items()]
        body = ["  " + ln for ln in self.host_source.splitlines()]
        return "\n".join([head, *rows, view.text(), describe_batching(self.batching),
                          "host program:", *body])

    def __repr__(self) -> str:
        return f"<dycomp Artifact {self.path} {self.signature}>"


def _region_names(ran, where: str) -> list[str]:
    if not isinstance(ran, list) or not all(isinstance(n, str) for n in ran):
        raise ArtifactError(f"{where}: 'ran' must be a list of region names")
    return ran


def _without_path(model: bytes, where: str) -> bytes:
    import onnx  # only for traced subgraphs

    from dycomp.runtime.onnx_paths import PATH_OUTPUT, drop_path

    try:
        m = onnx.load_from_string(model)
    except Exception as e:
        raise ArtifactError(f"{where}: not an ONNX model ({e})") from None
    if not m.graph.output or m.graph.output[-1].name != PATH_OUTPUT:
        raise ArtifactError(f"{where}: a traced subgraph must end with output {PATH_OUTPUT}")
    return drop_path(m).SerializeToString()


def _region_row(name: str, sub: dict) -> str:
    def ty(v):
        return f"{v.get('dtype') or '?'}[{', '.join(map(str, v.get('shape', [])))}]"

    ins = ", ".join(f"{v['name']}:{ty(v)}" for v in sub.get("inputs", []))
    outs = ", ".join(ty(v) for v in sub.get("outputs", []))
    lines = sub.get("lines", [])
    where = ", ".join(lines[:3]) + (" ..." if len(lines) > 3 else "")
    return f"  region {name}({ins}) -> ({outs})  {sub.get('ops', '?')} ops  [{where}]"


def exact_inputs(sig: Signature, values: tuple) -> bool:
    """Whether `values` are arrays of exactly the signature's dtypes and shapes, nothing to
    convert (one comparison of the (type, dtype, shape) triples, ~0.5 us for one input,
    against 1.2 us for `check_inputs`)."""
    return len(values) == len(sig.inputs) and all(
        type(v) is np.ndarray and v.dtype is s.dtype and v.shape == s.shape
        for v, s in zip(values, sig.inputs))


def check_inputs(sig: Signature, values: tuple) -> list[np.ndarray]:
    """Arrays matching `sig` exactly; ValueError naming the signature otherwise."""
    if len(values) != len(sig.inputs):
        raise ValueError(f"got {len(values)} inputs; expected {sig}")
    arrays = [_check_one(spec, v, sig) for spec, v in zip(sig.inputs, values)]
    if sig.dynamic:
        _same_sizes(sig, arrays)
    return arrays


def _fits(shape: tuple, spec: tuple) -> bool:
    """`shape` has `spec`'s rank and fixed sizes (a named dim takes any size)."""
    return shape == spec or len(shape) == len(spec) and all(
        isinstance(s, str) or s == n for s, n in zip(spec, shape))


def _same_sizes(sig: Signature, arrays: list) -> None:
    """ValueError unless each dynamic dim's name has one size across the inputs."""
    seen: dict = {}
    for spec, arr in zip(sig.inputs, arrays):
        for d, name in enumerate(spec.shape):
            if isinstance(name, str):
                where = f"{spec.name} dim {d}"
                first = seen.setdefault(name, (where, arr.shape[d]))
                if first[1] != arr.shape[d]:
                    raise ValueError(f"dynamic dim {name!r} is {first[1]} on {first[0]} but "
                                     f"{arr.shape[d]} on {where}; expected {sig}")


def _check_one(spec: TensorSpec, value, sig: Signature) -> np.ndarray:
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype != spec.dtype:
            raise ValueError(f"input {spec.name} has dtype {arr.dtype}; expected {sig}")
    else:
        arr = _exact_array(value, spec, sig)
    if not _fits(arr.shape, spec.shape):
        raise ValueError(f"input {spec.name} has shape {list(arr.shape)}; expected {sig}")
    return arr


def _exact_array(value, spec: TensorSpec, sig: Signature) -> np.ndarray:
    """A Python scalar or (nested) list as an array of spec.dtype, if that loses nothing
    but floating-point precision."""
    try:
        natural = np.asarray(value)
    except ValueError:
        natural = np.asarray(None, dtype=object)
    if natural.dtype.kind not in "biuf":
        raise ValueError(f"input {spec.name} is a {type(value).__name__} that is not a "
                         f"numeric array; expected {sig}")
    with np.errstate(invalid="ignore", over="ignore"):
        arr = natural.astype(spec.dtype)
        lossless = (natural.dtype.kind == "f" and spec.dtype.kind == "f") or np.array_equal(
            arr.astype(natural.dtype), natural)
    if not lossless:
        raise ValueError(f"input {spec.name} does not convert exactly to {spec.dtype.name}; "
                         f"expected {sig}")
    return arr
