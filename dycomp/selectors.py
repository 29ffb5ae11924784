"""`dycomp.compile(..., selectors=...)`: one compiled model, many sub-networks.

A supernet (slimmable, Once-for-All, stitchable networks) runs one of several declared
sub-networks, chosen by a Python argument (`forward(x, width=0.5)`) or by a setter
(`net.set_active_subnet(ks=3, e=3, d=2)`), not by the input tensor. Each declared
combination is compiled as today, the value baked in (the setter called before its
capture, the model's state restored after), and `SelectorModel` dispatches a call to the
sub-network the call selects (`dycomp.runtime.selectors`). Saved, the sub-networks share
one store of weights (`dycomp.runtime.shared_weights`).
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from dycomp.errors import UnsupportedError
from dycomp.fastcall import build as build_entry
from dycomp.frontend.capture import InputSpec
from dycomp.frontend.user_state import UserState
from dycomp.runtime import artifact as rt
from dycomp.runtime.errors import ModelError
from dycomp.runtime.live_pool import LivePool
from dycomp.runtime.selectors import KIND, Selected, describe
from dycomp.runtime.shared_weights import WEIGHTS, WeightStore, strip_all

log = logging.getLogger(__name__)


def parse(selectors: dict) -> list[dict]:
    """The declarations in the form the manifest keeps: per selector its name, kind
    ('argument' or 'method') and values (a method call as [name, args, kwargs])."""
    if not isinstance(selectors, dict) or not selectors:
        raise UnsupportedError(f"selectors must be a non-empty dict, got {selectors!r}",
                               hint='selectors={"width": [0.25, 0.5, 1.0]}')
    out = []
    for name, values in selectors.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UnsupportedError(f"selector name {name!r} is not an identifier",
                                   hint="name it after the argument it sets")
        values = list(values) if isinstance(values, (list, tuple)) else None
        if not values:
            raise UnsupportedError(f"selector {name!r} needs a non-empty list of values",
                                   hint=f'selectors={{"{name}": [0.5, 1.0]}}')
        calls = [_call(v) for v in values]
        if all(c is not None for c in calls):
            out.append({"name": name, "kind": "method", "values": calls})
        elif any(c is not None for c in calls):
            raise UnsupportedError(f"selector {name!r} mixes method calls and plain values",
                                   hint="declare setter calls and argument values apart")
        else:
            out.append({"name": name, "kind": "argument", "values": [_plain(name, v)
                                                                     for v in values]})
        if len({json.dumps(v, sort_keys=True) for v in out[-1]["values"]}) < len(values):
            raise UnsupportedError(f"selector {name!r} declares a value twice: {values}",
                                   hint="list each value once")
    return out


def _call(value) -> list | None:
    """A setter call `(method, kwargs)`, `(method, args)` or `(method, args, kwargs)` as
    [method, args, kwargs] (JSON-exact), or None if `value` is not one."""
    if not (isinstance(value, tuple) and 2 <= len(value) <= 3 and isinstance(value[0], str)):
        return None
    if len(value) == 3:
        method, args, kwargs = value
    elif isinstance(value[1], dict):
        method, args, kwargs = value[0], (), value[1]
    else:
        method, args, kwargs = value[0], value[1], {}
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        return None
    call = [method, list(args), dict(kwargs)]
    if json.loads(json.dumps(call)) != call:
        raise UnsupportedError(f"setter call {value!r} must be JSON-exact (numbers, strings, "
                               "lists, dicts) to be saved", hint="pass plain Python values")
    return call


def _plain(name: str, value):
    if value is None or isinstance(value, (bool, int, str)) or (
            isinstance(value, float) and value == value and abs(value) != float("inf")):
        return value
    raise UnsupportedError(f"selector {name!r}: value {value!r} ({type(value).__name__}) "
                           "cannot be declared", hint="use int, float, bool, str or None")


def compile_selected(model, example_inputs, selectors: dict, options: dict,
                     progress=None, max_live: int | None = rt.DEFAULT_LIVE) -> SelectorModel:
    """Compile every declared combination with `dycomp.compile(**options)`; `progress`
    (optional) is called with each sub-network's label before it is compiled. Backend
    'onnx': each sub-network, once compiled (and checked), keeps only its stripped ONNX
    models, its weights moved to one store shared by all (`_shared`)."""
    from dycomp.api import compile as compile_one

    LivePool(max_live)  # refuse a bad limit before compiling anything
    store = WeightStore() if options.get("backend") == "onnx" else None
    decl = parse(selectors)
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    base_kwargs = dict(options.pop("example_kwargs", None) or {})
    subnets = {}
    for key in itertools.product(*(range(len(s["values"])) for s in decl)):
        kwargs, calls = dict(base_kwargs), []
        for s, j in zip(decl, key):
            if s["kind"] == "argument":
                kwargs[s["name"]] = s["values"][j]
            else:
                calls.append(s["values"][j])
        label = ", ".join(describe(s, s["values"][j]) for s, j in zip(decl, key))
        log.info("compiling sub-network %s", label)
        if progress is not None:
            progress(label)
        with _configured(owner, calls):
            cm = compile_one(model, example_inputs, example_kwargs=kwargs, **options)
        if store is not None:
            manifest, files = _package(cm)
            onnx_files = _onnx_files(manifest)
            files.update(zip(onnx_files, strip_all([files[f] for f in onnx_files], store)))
            # the compiled model (its graph, exported models, sessions) is dropped here
            cm = _shared(cm, store, manifest, files, options.get("threads") or 2,
                         Path(f"<sub-network {label}>"))
        subnets[key] = cm
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (
        example_inputs,)
    if store is not None:
        store = _compact(subnets, store, options.get("threads") or 2)
    return SelectorModel(decl, subnets, example=args, weights=store, max_live=max_live)


def _shared(cm, store: WeightStore, manifest: dict, files: dict[str, bytes], threads: int,
            root: Path):
    """`cm` as a CompiledModel over its artifact (`manifest`, `files`: its ONNX models
    referring to `store`), named `root` in errors: sessions created on first call, the
    compile-time copies dropped."""
    from dycomp.api import CompiledModel
    from dycomp.artifact import input_spec

    art = rt.Artifact(root, manifest, files, threads, weights=store)
    shared = CompiledModel(art.program, input_spec(manifest), manifest["backend"],
                           graph=None, artifact=art)
    shared.optimizations, shared.options = cm.optimizations, cm.options
    shared.check, shared.batching = cm.check, cm.batching
    # what the dropped graph counted (regions, ops, ...), for summaries
    shared.graph_stats = cm.graph.stats() if cm.graph is not None else cm.graph_stats
    return shared


def _onnx_files(manifest: dict) -> list[str]:
    return sorted({s["file"] for s in manifest["subgraphs"].values()
                   if s.get("backend", "onnx") == "onnx"})


def _compact(subnets: dict, store: WeightStore, threads: int) -> WeightStore:
    """The store rebuilt largest tensors first (compiled one by one, a sub-network's
    slice was stored before the whole weight a later one holds; now it is a block of
    it), `subnets` moved onto it in place."""
    compact = WeightStore()
    models = [(k, f) for k, cm in subnets.items() for f in _onnx_files(cm.artifact.manifest)]
    stripped = strip_all([subnets[k].artifact.files[f] for k, f in models], compact, store)
    files = {k: dict(cm.artifact.files) for k, cm in subnets.items()}
    for (k, f), data in zip(models, stripped):
        files[k][f] = data
    for k, cm in subnets.items():
        subnets[k] = _shared(cm, compact, cm.artifact.manifest, files[k], threads,
                             cm.artifact.path)
    log.info("weight store: %d distinct tensors (%.1f MB; %.1f MB before compacting) for "
             "%d references", compact.tensors, compact.nbytes / 1e6, store.nbytes / 1e6,
             compact.references)
    return compact


class _configured:
    """The model configured by setter calls; its state (module attributes, submodules,
    reachable containers) restored on exit."""

    def __init__(self, owner, calls: list):
        self.owner, self.calls = owner, calls

    def __enter__(self):
        self.state = UserState()
        if not self.calls:
            return self
        if not isinstance(self.owner, nn.Module):
            raise UnsupportedError("setter selectors need an nn.Module (or a bound method of "
                                   "one) to call them on", hint="pass the model itself")
        self.state.save(self.owner)
        try:
            self._call_setters()
        except BaseException:
            self.state.restore()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def _call_setters(self) -> None:
        for method, args, kwargs in self.calls:
            setter = getattr(self.owner, method, None)
            if not callable(setter):
                raise UnsupportedError(f"{type(self.owner).__name__} has no method {method!r}",
                                       hint="declare calls of the model's own setter")
            try:
                setter(*args, **kwargs)
            except Exception as e:  # the user's setter refused the declared call
                raise UnsupportedError(
                    f"declared call {describe({'kind': 'method'}, (method, args, kwargs))} "
                    f"raised {type(e).__name__}: {e}",
                    hint="declare calls the setter accepts") from e

    def __exit__(self, *exc):
        self.state.restore()
        return False


class SelectorModel(Selected):
    """Compiled sub-networks behind one call: `cm(x, width=0.5)`, the setters the
    declarations name (`cm.set_active_subnet(...)`), `measure()`, `select(budget_ms)`,
    `save(path)`. `subnets[key]` is each sub-network's CompiledModel."""

    def __init__(self, selectors: list[dict], subnets: dict, params: dict | None = None,
                 latency: dict | None = None, example: tuple | None = None, weights=None,
                 max_live: int | None = rt.DEFAULT_LIVE):
        params = params or {k: _params(cm) for k, cm in subnets.items()}
        super().__init__(selectors, subnets, params, latency, max_live=max_live)
        self.example = example
        self.weights = weights  # the store the sub-networks' ONNX tensors refer to
        self._entries = {k: _entry(cm, self._arg_values(k)) for k, cm in subnets.items()}

    def _arg_values(self, key: tuple) -> dict:
        return {name: values[key[i]] for i, name, _, values in self._args}

    def __call__(self, *args, **kwargs):
        key = self._pick(kwargs)
        if key != self._hot:
            self._use(key)
        try:
            return self._entries[key](args, kwargs)
        except ModelError as e:
            from dycomp.api import _own_exception

            raise _own_exception(e) from None

    def run(self, *args, return_path: bool = False, **kwargs):
        key = self._pick(kwargs)
        self._use(key)
        return self.subnets[key].run(*args, return_path=return_path, **kwargs,
                                     **self._arg_values(key))

    def measure(self, *inputs, repeat: int = 30, warmup: int = 3) -> dict[str, float]:
        """As `Selected.measure`, on the example inputs when none are given."""
        return super().measure(*(inputs or self.example or ()), repeat=repeat, warmup=warmup)

    @property
    def check(self) -> dict:
        """Each sub-network's self-check report, by label."""
        return {self.label(k): cm.check for k, cm in self.subnets.items()}

    def explain(self) -> str:
        return "dycomp model with selectors: " + self.table()

    def save(self, path) -> Path:
        """One artifact directory: every sub-network, their large tensors stored once."""
        return save(self, path)


def _params(cm) -> int:
    return sum(int(s.get("params") or 0) for s in cm.subgraphs.values())


def _entry(cm, values: dict):
    """`call(args, kwargs)` running `cm` with the selector keywords `values` already
    chosen: the fast positional entry where the call has no other keywords."""
    def slow(args, kwargs):
        return cm(*args, **kwargs, **values)
    spec = _positional_spec(cm.spec, set(values))
    return slow if spec is None else build_entry(spec, cm.program.run, slow)


def _positional_spec(spec: InputSpec, names: set) -> InputSpec | None:
    """`spec` without its keyword leaves, if they are all selector keywords."""
    try:
        args_spec, kwargs_spec = spec.treespec.children()
        keys = list(kwargs_spec.context or ())
    except (AttributeError, ValueError, TypeError):
        return None
    if set(keys) - names or len(keys) != kwargs_spec.num_leaves:
        return None
    n = args_spec.num_leaves
    _, treespec = tree_flatten((tree_unflatten([0] * n, args_spec), {}))
    return InputSpec(treespec, spec.names[:n], spec.tensor[:n], spec.static[:n],
                     spec.dynamic[:n] if spec.dynamic and any(spec.dynamic[:n]) else None)


# -- artifact --------------------------------------------------------------------------------
def save(sm: SelectorModel, path) -> Path:
    """Write `sm` to the directory `path`: manifest.json, weights.bin, subnets/<i>/."""
    from dycomp.artifact import write_atomic
    from dycomp.runtime.batch_rows import variant_files

    packed = [_package(cm) for cm in sm.subnets.values()]
    onnx_files = [(n, f) for n, (manifest, _) in enumerate(packed)
                  for f in sorted({*_onnx_files(manifest), *variant_files(manifest)})]
    store = WeightStore()  # every sub-network's tensors at once: whole weights first
    stripped = strip_all([packed[n][1][f] for n, f in onnx_files], store, sm.weights)
    for (n, f), data in zip(onnx_files, stripped):
        packed[n][1][f] = data
    files, entries = {}, []
    for n, (key, (manifest, sub_files)) in enumerate(zip(sm.subnets, packed)):
        manifest["files"] = {rel: rt.sha256(d) for rel, d in sorted(sub_files.items())}
        folder = f"subnets/{n}"
        files.update({f"{folder}/{rel}": data for rel, data in sub_files.items()})
        files[f"{folder}/{rt.MANIFEST}"] = (json.dumps(manifest, indent=1, allow_nan=False)
                                            + "\n").encode("utf-8")
        entries.append({"key": list(key), "dir": folder, "label": sm.label(key),
                        "params": sm.params.get(key, 0), "latency_ms": sm.latency.get(key)})
    files[WEIGHTS] = store.to_bytes()
    top = {"format": rt.FORMAT, "format_version": rt.FORMAT_VERSION, "kind": KIND,
           "selectors": sm.selectors, "subnets": entries,
           "weights": {"file": WEIGHTS, "tensors": store.tensors, "blocks": store.blocks,
                       "references": store.references, "bytes": len(files[WEIGHTS])}}
    top["files"] = {rel: rt.sha256(files[rel]) for rel in sorted(files)
                    if rel == WEIGHTS or rel.endswith("/" + rt.MANIFEST)}
    log.info("saved %d sub-networks: %d distinct tensors for %d references", len(entries),
             store.tensors, store.references)
    return write_atomic(Path(path), top, files)


def _package(cm) -> tuple[dict, dict[str, bytes]]:
    """A sub-network's manifest (without `files`) and files, as `cm.save` would write."""
    from dycomp.artifact import package

    if cm.artifact is not None:  # ONNX files as they are: stripped when shared
        return ({k: v for k, v in cm.artifact.manifest.items() if k != "files"},
                dict(cm.artifact.files))
    return package(cm)


def is_selected_artifact(path) -> bool:
    """Whether the artifact directory at `path` holds a model with selectors."""
    from dycomp.runtime.selectors import is_selected

    raw = rt.read_optional(Path(path), rt.MANIFEST) if Path(path).is_dir() else None
    return raw is not None and is_selected(raw)


def load(path, threads: int = 2, *, trust_native: bool = False,
         public_key=None, max_live: int | None = rt.DEFAULT_LIVE) -> SelectorModel:
    """A saved model with selectors, its sub-networks as torch-friendly CompiledModels."""
    from dycomp.api import CompiledModel
    from dycomp.artifact import input_spec

    sel = rt.load(path, threads=threads, trust_native=trust_native, public_key=public_key,
                  max_live_subnets=max_live)
    subnets = {}
    for key, art in sel.subnets.items():
        cm = CompiledModel(art.program, input_spec(art.manifest), art.manifest["backend"],
                           graph=None, artifact=art)
        cm.optimizations = list(art.manifest.get("optimizations", []))
        subnets[key] = cm
    weights = next((a.weights for a in sel.subnets.values() if a.weights is not None), None)
    return SelectorModel(sel.selectors, subnets, sel.params, sel.latency, weights=weights,
                         max_live=max_live)
