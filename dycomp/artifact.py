"""Saving a CompiledModel as a deployable artifact directory, and loading it back.

Layout: `manifest.json`, `subgraphs/<region>.onnx`, `host.py`. No pickle: the manifest is
JSON, the subgraphs ONNX, the host program Python source. The torch-free reader lives in
`dycomp.runtime.artifact`; this module adds what needs the compiler (torch dtypes, pytree
specs, the DynGraph).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import uuid
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import torch
from torch.utils._pytree import treespec_dumps, treespec_loads

import dycomp
from dycomp.errors import ArtifactError, UnsupportedError
from dycomp.frontend.capture import InputSpec
from dycomp.runtime import artifact as rt

if TYPE_CHECKING:
    from dycomp.api import CompiledModel

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def save(cm: CompiledModel, path) -> Path:
    """Write `cm` to the directory `path` (replacing an artifact there) and return it."""
    if getattr(cm, "artifact", None) is not None:
        files = cm.artifact.own_files()  # a sub-network's weights put back from its store
        manifest = {k: v for k, v in cm.artifact.manifest.items() if k != "files"}
    else:
        manifest, files = package(cm)
    manifest["files"] = {rel: rt.sha256(data) for rel, data in sorted(files.items())}
    return write_atomic(Path(path), manifest, files)


def package(cm: CompiledModel) -> tuple[dict, dict[str, bytes]]:
    """The manifest (without `files`) and the file contents of a freshly compiled model."""
    if cm.backend not in rt.BACKENDS:
        raise UnsupportedError(f"cannot save a model compiled for backend {cm.backend!r}",
                               hint="compile with backend='onnx' or 'tvm' to get a deployable "
                                    "artifact")
    graph, executor = cm.graph, cm.executor
    placement = getattr(executor, "placement", None) or dict.fromkeys(graph.regions, "onnx")
    traced = getattr(executor, "traced", {})  # fused subgraphs: (traced model, region names)
    models = _models(executor, [n for n in graph.regions if placement[n] == "onnx"])
    files = {rt.HOST: cm.host_source.encode("utf-8")}
    if "tvm" in placement.values():
        files[rt.TVM_LIBRARY] = executor.library
    subgraphs = {}
    for name, region in graph.regions.items():
        entry = _subgraph_entry(name, region)
        entry["backend"] = placement[name]
        entry["threads"] = getattr(executor, "threads", {}).get(name, 1)
        if name in traced:  # saved traced: it can tell the regions it ran
            files[entry["file"]], ran = traced[name]
            entry["ran"] = list(ran)
        elif placement[name] == "onnx":
            files[entry["file"]] = models[name]
        else:
            entry["file"] = rt.TVM_LIBRARY
        subgraphs[name] = entry
    manifest = {
        "format": rt.FORMAT, "format_version": rt.FORMAT_VERSION, "versions": _versions(cm.backend),
        "backend": cm.backend, "method": graph.name, "source": graph.source,
        "inputs": _entry_inputs(cm.spec), "treespec": treespec_dumps(cm.spec.treespec),
        "host": rt.HOST, "host_program": _host_data(cm), "cfg": _cfg_data(graph),
        "subgraphs": subgraphs, "stats": _jsonable(graph.stats()),
    }
    if cm.backend == "tvm":
        manifest["tvm"] = _jsonable(vars(executor.report))
    fused = {n: r.fused for n, r in graph.regions.items() if r.fused}
    if fused:  # the control flow lowered into them, for display only (runtime/controlflow.py)
        manifest["fused"] = fused
    if cm.optimizations:
        manifest["optimizations"] = list(cm.optimizations)
    if getattr(cm, "check", None) is not None:
        manifest["check"] = cm.check.to_json()
    if getattr(cm, "batching", None) is not None:
        if cm.batching.variants:  # rows variants (dycomp/batching_attach.py), built once
            from dycomp.batching_attach import attach_rows_variants

            attach_rows_variants(cm.batching, graph, dynamic=cm.batching.variants == "dynamic",
                                 executor=executor)
            cm.batching.variants = ""
        manifest["batching"] = cm.batching.to_json()
        files.update(cm.batching.files)
    return manifest, files


def _host_data(cm: CompiledModel) -> dict:
    """The host program as data (what the runtime runs; host.py is its readable copy)."""
    data = cm.program.data
    if data is None:
        raise ArtifactError("the compiled model's host program is not data; recompile it")
    return data


def _models(executor, regions) -> dict[str, bytes]:
    models = getattr(executor, "models", None)
    if not isinstance(models, dict):
        raise ArtifactError(f"{type(executor).__name__} has no ONNX models to save")
    out = {}
    for name in regions:
        if not _SAFE_NAME.match(name):
            raise ArtifactError(f"region name {name!r} cannot be used as a file name")
        model = models.get(name)
        if model is None:
            raise ArtifactError(f"the ONNX executor has no model for region {name}")
        out[name] = model if isinstance(model, bytes) else Path(model).read_bytes()
    return out


def _versions(backend: str) -> dict:
    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    out = {"dycomp": dycomp.__version__, "onnx": version("onnx"),
           "onnxruntime": version("onnxruntime"), "torch": torch.__version__,
           "python": platform.python_version()}
    if backend == "tvm":
        out["apache-tvm"] = version("apache-tvm")
    return out


def _cfg_data(graph) -> dict:
    """node_link_data of the control-flow graph, with node ids numbered in order (the
    graph's own ids are object addresses, which would make every save differ)."""
    g = graph.cfg()
    names = {n: n if n == "entry" else f"{d.get('kind', 'node').lower()}{i}"
             for i, (n, d) in enumerate(g.nodes(data=True))}
    return _jsonable(nx.node_link_data(nx.relabel_nodes(g, names), edges="edges"))


def _dtype_name(dtype) -> str | None:
    return None if dtype is None else str(dtype).replace("torch.", "")


def _subgraph_entry(name: str, region) -> dict:
    ins, outs = region.signature()
    return {
        "file": f"subgraphs/{name}.onnx",
        "inputs": [{"name": n, "dtype": _dtype_name(d), "shape": _jsonable(s), "dynamic": dyn}
                   for (n, d, s), dyn in zip(ins, _dynamic_inputs(region, ins))],
        "outputs": [{"name": n, "dtype": _dtype_name(d), "shape": _jsonable(s)}
                    for n, d, s in outs],
        "lines": [str(x) for x in region.lines], "ops": region.op_count(),
        "params": region.param_count(),
    }


def _dynamic_inputs(region, ins: list) -> list[bool]:
    """Per input: may its shape change between calls? (FX regions: the shape analysis;
    ONNX-only regions: a symbolic dimension.)"""
    if region.gm is None:
        return [any(not isinstance(d, int) for d in s) for _, _, s in ins]
    return [bool(ph.meta.get("dynamic")) for ph in region.placeholders]


def _entry_inputs(spec: InputSpec) -> list[dict]:
    out = []
    for i, (name, t, static) in enumerate(zip(spec.names, spec.tensor, spec.static)):
        if t is not None:  # a dynamic dim by its name (`["batch", 3, 32, 32]`)
            out.append({"name": name, "dtype": _dtype_name(t[0]), "shape": list(spec.shape(i))})
        else:
            out.append({"name": name, "static": _static_value(name, static)})
    return out


def _static_value(name: str, value):
    """A baked Python argument, if JSON keeps it exactly (type and value)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise UnsupportedError(
        f"argument {name}={value!r} ({type(value).__name__}) was baked into the compiled "
        "model and cannot be stored in the JSON manifest",
        hint="pass it as a tensor, or make it an int, float, bool, str or None")


def _jsonable(x):
    """`x` with tuples/sets as lists and anything else JSON lacks as its str()."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted(_jsonable(v) for v in x)
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float) and math.isfinite(x):
        return x
    return str(x)


# -- writing -------------------------------------------------------------------------------
def write_atomic(path: Path, manifest: dict, files: dict[str, bytes]) -> Path:
    """Write into a temporary sibling directory, then rename it into place."""
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_files(tmp, manifest, files)
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _check_target(path: Path) -> None:
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if path.is_dir() and (path / rt.MANIFEST).is_file():
        try:
            if json.loads((path / rt.MANIFEST).read_text("utf-8")).get("format") == rt.FORMAT:
                return
        except (ValueError, AttributeError):
            pass
    raise ArtifactError(f"{path} exists and is not a dycomp artifact; refusing to overwrite "
                        "it (choose another path or remove it)")


def _write_files(tmp: Path, manifest: dict, files: dict[str, bytes]) -> None:
    tmp.mkdir()
    for rel, data in files.items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    text = json.dumps(manifest, indent=1, allow_nan=False)
    (tmp / rt.MANIFEST).write_text(text + "\n", encoding="utf-8")


def _replace(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- loading as a CompiledModel ------------------------------------------------------------
def load(path, threads: int = 2, *, trust_native: bool = False,
         public_key=None) -> CompiledModel:
    """Load an artifact as a torch-friendly CompiledModel (torch tensors in and out);
    `trust_native` and `public_key` as for `dycomp.runtime.load`."""
    from dycomp.api import CompiledModel

    art = rt.load(path, threads=threads, trust_native=trust_native, public_key=public_key)
    cm = CompiledModel(art.program, input_spec(art.manifest), art.manifest["backend"],
                       graph=None, artifact=art)
    cm.optimizations = list(art.manifest.get("optimizations", []))
    from dycomp.batching import Batching
    from dycomp.runtime.batching import batching_of

    cm.batching = Batching.from_json(batching_of(art.manifest))  # none saved: unbatchable
    return cm


def input_spec(manifest: dict) -> InputSpec:
    """Rebuild the InputSpec (pytree structure, names, dtypes, baked values)."""
    try:
        treespec = treespec_loads(manifest["treespec"])
    except (KeyError, TypeError, ValueError, NotImplementedError) as e:
        raise ArtifactError(f"manifest: cannot read the input structure (treespec): {e}") from None
    names, tensor, static, dynamic = [], [], [], []
    for leaf in manifest["inputs"]:
        names.append(leaf["name"])
        if "dtype" in leaf:
            tensor.append((_torch_dtype(leaf["dtype"]), tuple(leaf["shape"])))
            dynamic.append({d: s for d, s in enumerate(leaf["shape"]) if isinstance(s, str)})
            static.append(None)
        else:
            tensor.append(None)
            dynamic.append({})
            static.append(leaf.get("static"))
    if treespec.num_leaves != len(names):
        raise ArtifactError(f"manifest: {len(names)} inputs but the treespec has "
                            f"{treespec.num_leaves} leaves")
    return InputSpec(treespec, names, tensor, static, dynamic if any(dynamic) else None)


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"manifest: unknown dtype {name!r}")
    return dtype
