"""The Python API: `dycomp.compile` and `CompiledModel`.

compile() reads top to bottom: capture -> verify -> passes -> lower -> check.
"""

from __future__ import annotations

import importlib
import logging
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from dycomp.backends import lower
from dycomp.backends.frozen_values import check_captured
from dycomp.batching import classify_batching, for_artifact
from dycomp.errors import DycompError, PassError, UnsupportedError
from dycomp.fastcall import build as build_entry
from dycomp.frontend.capture import InputSpec, capture
from dycomp.frontend.dyndims import same_sizes, shape_ok
from dycomp.frontend.randomness import has_random
from dycomp.ir.dyngraph import DynGraph
from dycomp.ir.program import program_data
from dycomp.logs import configure as configure_logging
from dycomp.passes import run_passes
from dycomp.runtime.artifact import DEFAULT_LIVE
from dycomp.runtime.errors import ModelError
from dycomp.runtime.host import HostProgram

log = logging.getLogger(__name__)


def compile(model, example_inputs, *, example_kwargs: dict | None = None,
            method: str = "forward", backend: str = "torch", passes=(),
            check: bool = True, threads: int | None = None, optimize=True,
            fuse_branches: bool = True, tune=None, strict: bool = False,
            selectors: dict | None = None, max_live_subnets: int | None = DEFAULT_LIVE,
            dynamic_dims: dict | None = None, batch_variants: bool = False) -> CompiledModel:
    """Compile `model.<method>` (or a bound method) into static regions + a host program.

    `passes`: `dycomp.passes.Prune` (prunes a copy of the model before capture; the
    check then compares with the pruned eager model), `Quantize` (backend 'onnx': rewrites
    the exported subgraphs; no exact check, use `dycomp.compare`) and DynGraph passes.
    What they did is listed in `cm.optimizations`.
    `optimize`: the dynamic-aware passes (`dycomp.passes.DYNAMIC_PASSES`: gate-to-branch,
    hoist-loop-invariants, fuse-across-decisions): True for all (default), False for
    none, or the names (or configured instances) to run. Each one applied is listed in
    `cm.optimizations` with its source line and estimated saving (`cm.explain()`,
    `dycomp compile --explain-opts`).
    `threads`: intra-op threads per compiled subgraph (backend 'onnx'; default 2).
    `fuse_branches`: lower host branches and loops around subgraphs into ONNX `If` /
    `Loop` nodes (backend 'onnx'); off, every region is dispatched by the host.
    `tune`: a `dycomp.TuneConfig` (backend 'tvm'): MetaSchedule tuning with a persistent
    database; without it TVM's code is untuned (slow). `strict` (backend 'tvm'): raise
    instead of running regions TVM cannot compile on ONNX Runtime.
    `selectors`: arguments or setter calls chosen at call time among declared values
    (`{"width": [0.5, 1.0]}`, `{"subnet": [("set_active_subnet", {"d": 2}), ...]}`):
    one sub-network compiled per combination, returned as a `dycomp.selectors.SelectorModel`
    (`cm(x, width=0.5)`; saved as one artifact with the shared weights stored once).
    Backend 'onnx': the sub-networks share one in-memory store of weights and create their
    ONNX Runtime sessions on first call; `max_live_subnets` (None: all) keeps at most that
    many sub-networks' sessions alive, the least recently called released first.
    `dynamic_dims`: input dims whose size varies between calls, `{"x": {0: "batch"}}`
    (one name on several inputs: the same size); the regions take any size there, calls
    are checked against the signature (`cm.signature`), the self-check runs at several
    sizes. Code that needs such a size as one scalar is refused (README, "Variable
    dimensions").
    `batch_variants` (backend 'onnx'): when saved, each row-wise region left on the host
    also gets a per-row copy, checked against it, so that `dycomp.runtime.batching.run_batch`
    and `dycomp serve` run a group of requests in one call (README, "Rows variants"; a
    larger artifact and a longer save)."""
    configure_logging()
    if selectors is not None:
        from dycomp.selectors import compile_selected

        return compile_selected(model, example_inputs, selectors, dict(
            example_kwargs=example_kwargs, method=method, backend=backend, passes=passes,
            check=check, threads=threads, optimize=optimize, fuse_branches=fuse_branches,
            tune=tune, strict=strict, dynamic_dims=dynamic_dims,
            batch_variants=batch_variants), max_live=max_live_subnets)
    fn = _resolve(model, method)
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (
        example_inputs,)
    kwargs = dict(example_kwargs or {})
    prune, quantize, passes = _split_passes(passes, backend)
    notes = []
    for p in prune:
        fn, note = _prune(fn, p, args, kwargs)
        notes.append(note)
    graph, spec = capture(fn, args, kwargs, dynamic_dims)
    check_captured(graph)  # no region holds a traced value as a constant
    graph.verify()
    random = has_random(graph)
    log.info("captured %s: %s", graph.source, graph.stats())
    if_nodes = backend == "onnx" and fuse_branches
    graph = run_passes(graph, _optimizations(optimize, if_nodes) + _lowering(if_nodes)
                       + list(passes))
    graph.verify()
    log.info("after passes: %s", graph.stats())
    log.debug("host program:\n%s", graph.host_source())
    options = {} if threads is None else {"threads": threads}
    if backend == "onnx":
        options["fuse"] = fuse_branches
        if quantize:
            options["quantize"] = _quantizer(quantize[0], graph, spec, notes)
    if backend == "tvm":
        options.update(tune=tune, strict=strict)
    elif tune is not None or strict:
        raise UnsupportedError(f"tune= and strict= apply to backend 'tvm', not {backend!r}",
                               hint="pass backend='tvm'")
    batching = classify_batching(graph)  # before lowering: fused If / Loop hide decisions
    executor = lower(graph, backend, **options)
    cm = CompiledModel.from_graph(graph, executor, spec, backend)
    cm.batching = for_artifact(batching, graph)
    if batch_variants and backend == "onnx" and not quantize:  # a float copy of a
        # quantized region differs
        cm.batching.variants = "dynamic" if any(spec.dynamic or []) else "fixed"  # on save
    cm.optimizations = notes + [str(a) for a in graph.applied]
    cm.options = {"backend": backend, "fuse_branches": fuse_branches, "optimize": optimize}
    if check and quantize:
        check = False  # quantized outputs differ by design: measure with dycomp.compare
    if check and random:  # values differ per call: their structure only, nothing forced
        from dycomp.check import differential_check

        differential_check(fn, cm, args, kwargs, random=True)
    elif check:
        from dycomp.check_paths import path_check

        cm.check = path_check(fn, cm, args, kwargs, more=14)
        if spec.dynamic:
            from dycomp.check_dyndims import check_sizes

            check_sizes(fn, cm, args, kwargs)
    return cm


def _optimizations(optimize, if_nodes: bool) -> list:
    """The dynamic-aware passes `optimize` selects: True (all), False (none), or names
    and configured pass instances (`GateToBranch(min_us=0)`)."""
    from dycomp.passes import DYNAMIC_PASSES, dynamic_passes

    if optimize is True or optimize is False:
        return dynamic_passes(None if optimize else (), if_nodes)
    items = [optimize] if isinstance(optimize, str) else list(optimize)
    for p in items:
        if getattr(p, "name", p) not in DYNAMIC_PASSES or not isinstance(
                p, (str, *DYNAMIC_PASSES.values())):
            raise UnsupportedError(f"unknown optimization {p!r}",
                                   hint=f"use True, False or names from {list(DYNAMIC_PASSES)}")
    return dynamic_passes(items, if_nodes)


def _lowering(if_nodes: bool) -> list:
    """Host decisions on scalars read from tensors become tensor decisions where the
    backend lowers branches into `If` nodes (ONNX)."""
    from dycomp.passes import cleanup_passes
    from dycomp.passes.tensor_conditions import TensorConditions

    return [TensorConditions()] + cleanup_passes() if if_nodes else []


def _split_passes(passes, backend: str):
    """(Prune configs, Quantize configs, DynGraph passes), validated."""
    from dycomp.passes.prune import Prune
    from dycomp.passes.quantize import Quantize, check_backend

    passes = list(passes)
    prune = [p for p in passes if isinstance(p, Prune)]
    quantize = [p for p in passes if isinstance(p, Quantize)]
    if len(quantize) > 1:
        raise UnsupportedError("more than one Quantize pass given", hint="pass one Quantize")
    for q in quantize:
        check_backend(q, backend)
    return prune, quantize, [p for p in passes if p not in prune and p not in quantize]


def _prune(fn, config, args, kwargs):
    """The pruned copy's entry point, and a line for the compile report."""
    from dycomp.check import variants

    model = getattr(fn, "__self__", None)
    if not isinstance(model, nn.Module):
        raise UnsupportedError("Prune needs an nn.Module or a bound method of one",
                               hint="pass the model (method=... names the entry)")
    name = fn.__name__  # the method itself, also when the instance rebinds `forward`
    if kwargs:
        raise UnsupportedError("Prune inside compile() takes positional example inputs only",
                               hint="prune with Prune(...).apply(model, inputs) first")
    samples = [a for a, _ in variants(args, {}, n=7)]
    try:
        pruned = config.apply(model, args, method=name, samples=samples)
    except DycompError:
        raise
    except Exception as e:  # Torch-Pruning (or the pruned model) failed
        raise PassError(f"pass prune crashed: {type(e).__name__}: {e}") from e
    return getattr(pruned, name), pruned.dycomp_prune.summary()


def _quantizer(config, graph, spec, notes: list):
    """The `quantize(graph)` step for the ONNX backend: calibrates on the torch regions
    first (static int8), then rewrites each exported region."""
    from dycomp.backends.torch_backend import TorchExecutor
    from dycomp.passes.quantize import quantize_regions, region_inputs

    samples = None
    if config.calibration is not None:
        reference = CompiledModel.from_graph(graph, TorchExecutor(graph), spec, "torch")
        samples = region_inputs(graph, reference, config.calibration)

    def quantize(g):
        report = quantize_regions(g, config, samples)
        notes.append(report.summary())
        notes.extend(report.warnings)
    return quantize


def _resolve(model, method):
    if isinstance(model, nn.Module):
        fn = getattr(model, method, None)
        if fn is None or not callable(fn):
            raise UnsupportedError(f"{type(model).__name__} has no method {method!r}",
                                   hint="pass method='forward' or the name of a method")
        return fn
    if isinstance(model, types.MethodType) and isinstance(model.__self__, nn.Module):
        return model
    if callable(model):
        return model
    raise UnsupportedError(f"cannot compile a {type(model).__name__}",
                           hint="pass an nn.Module or a bound method of one")


class CompiledModel:
    """A compiled dynamic network. Call it like the original; safe to call from threads."""

    def __init__(self, program: HostProgram, spec: InputSpec, backend: str,
                 graph: DynGraph | None = None, artifact=None):
        self.program, self.spec, self.backend, self.graph = program, spec, backend, graph
        self.artifact = artifact  # the dycomp.runtime Artifact this model was loaded from
        self.optimizations: list[str] = []  # what the passes did (source lines, savings)
        self.options: dict = {}  # how it was compiled (backend, fuse_branches, optimize)
        self.check = None  # the self-check's CheckReport (coverage), or its manifest dict
        self.batching = None  # dycomp.batching.Batching: per-sample / path-split / unbatchable

    @classmethod
    def from_graph(cls, graph: DynGraph, executor, spec: InputSpec, backend: str):
        lines = {n: ", ".join(r.lines[:2]) for n, r in graph.regions.items()}
        program = HostProgram.from_data(program_data(graph.body, graph.params), executor, lines,
                                        header=graph.host_header())
        return cls(program, spec, backend, graph)

    @property
    def executor(self):
        return self.program.executor

    @property
    def host_source(self) -> str:
        return self.program.source

    @property
    def subgraphs(self) -> dict[str, dict]:
        if self.graph is None:
            return _manifest_subgraphs(self.artifact.subgraphs)
        out = {}
        for name, r in self.graph.regions.items():
            ins, outs = r.signature()
            out[name] = {"ops": r.op_count(), "params": r.param_count(), "inputs": ins,
                         "outputs": outs, "lines": list(r.lines)}
        return out

    def explain(self) -> str:
        if self.graph is None:
            return self.artifact.explain()
        s, view = self.graph.stats(), self.control_view()
        opts = "".join(f"\n  {o}" for o in self.optimizations)
        return (f"dycomp compiled {self.graph.name} ({self.graph.source}) for backend "
                f"{self.backend}: {s['regions']} subgraphs, {view.counts()}, "
                f"{s['returns']} returns"
                f"{chr(10) + 'optimizations:' + opts if opts else ''}"
                f"{_check_line(self.check)}\n\n{view.text()}\n\n{self.graph}")

    def control_view(self):
        """Every branch and loop of the source with where it runs (the host, or inside a
        fused subgraph as ONNX `If` / `Loop`), and the regions paths name."""
        from dycomp.runtime.controlflow import graph_view, manifest_view

        if self.graph is None:
            return manifest_view(self.artifact.manifest)
        return graph_view(self.program.data or {}, self.graph.regions)

    def save(self, path) -> Path:
        """Write the deployable artifact directory (backends 'onnx' and 'tvm'); returns
        its path."""
        from dycomp.artifact import save

        return save(self, path)

    # (spec, program.run, entry): the call entry specialised to this signature and program
    # (`dycomp.fastcall`), built on the first call and again when either changes.
    _entry_cache: tuple = (None, None, None)

    def __call__(self, *args, **kwargs):
        entry = self._entry_cache
        if entry[1] is not self.program.run or entry[0] is not self.spec:
            entry = self.spec, self.program.run, build_entry(self.spec, self.program.run,
                                                             self._general)
            self._entry_cache = entry
        try:
            return entry[2](args, kwargs)
        except ModelError as e:
            raise _own_exception(e) from None

    def _general(self, args, kwargs):
        return self.run(*args, **kwargs)

    def run(self, *args, return_path: bool = False, **kwargs):
        inputs, use_torch = self._inputs(args, kwargs)
        try:
            out, path = (self.program.run_path(*inputs) if return_path
                         else (self.program.run(*inputs), None))
        except ModelError as e:
            raise _own_exception(e) from None
        if use_torch:
            out = _to_torch(out)
        return (out, path) if return_path else out

    def _inputs(self, args, kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        if spec != self.spec.treespec:
            raise ValueError(f"expected inputs {self.spec.describe()}, got "
                             f"{len(leaves)} values structured differently")
        inputs, use_torch = [], False
        for leaf, name, t, static in zip(leaves, self.spec.names, self.spec.tensor,
                                         self.spec.static):
            if t is None:
                if not _same(leaf, static):
                    raise ValueError(f"argument {name}={leaf!r} differs from the value "
                                     f"{static!r} the model was compiled for; expected "
                                     f"{self.spec.describe()}")
                continue
            if isinstance(leaf, torch.Tensor):
                use_torch = True
                arr = leaf.detach().cpu().numpy()
            elif isinstance(leaf, np.ndarray):
                arr = leaf
            else:
                raise ValueError(f"argument {name} must be a tensor or array, got "
                                 f"{type(leaf).__name__}; expected {self.spec.describe()}")
            dtype, shape = t
            if not _shape_ok(arr.shape, shape, self.spec, len(inputs)) or str(
                    arr.dtype) != str(dtype).replace("torch.", ""):
                raise ValueError(f"argument {name} has shape {tuple(arr.shape)} and dtype "
                                 f"{arr.dtype}; expected {self.spec.describe()}")
            inputs.append(arr)
        if self.spec.dynamic:
            same_sizes(self.spec, inputs)
        return inputs, use_torch

    @property
    def signature(self) -> str:
        """The tensor inputs it takes, dynamic dims by name: `(x: float32[batch, 3, 32, 32])`."""
        return self.spec.describe()

    def __repr__(self) -> str:
        return f"<dycomp CompiledModel {self.backend} {self.signature}>"


def _shape_ok(shape, fixed, spec: InputSpec, k: int) -> bool:
    """`shape` fits input leaf `k`-th tensor's; dynamic dims take any size."""
    if not spec.dynamic:
        return tuple(shape) == fixed
    i = [j for j, t in enumerate(spec.tensor) if t is not None][k]
    return shape_ok(shape, spec.shape(i))


def _check_line(check) -> str:
    """The self-check's coverage for `explain()`; empty when it did not run."""
    return "" if check is None else f"\ncheck: {check.summary()}"


def load(path, threads: int = 2, *, trust_native: bool = False,
         public_key=None, max_live_subnets: int | None = DEFAULT_LIVE) -> CompiledModel:
    """Load a saved artifact as a CompiledModel: torch tensors in and out, same structure.
    An artifact with native code (TVM) needs `trust_native=True` or a `public_key` whose
    signature it carries; a `public_key` is checked for every artifact. A model with
    selectors creates a sub-network's sessions on its first call, at most
    `max_live_subnets` sub-networks' alive (None: all)."""
    from dycomp import selectors
    from dycomp.artifact import load as load_artifact

    if selectors.is_selected_artifact(path):  # many sub-networks: a SelectorModel
        return selectors.load(path, threads=threads, trust_native=trust_native,
                              public_key=public_key, max_live=max_live_subnets)
    return load_artifact(path, threads=threads, trust_native=trust_native,
                         public_key=public_key)


def _manifest_subgraphs(subgraphs: dict) -> dict[str, dict]:
    """The manifest's subgraph table in the form `CompiledModel.subgraphs` gives it."""
    def sig(values):
        return [(v["name"], getattr(torch, v["dtype"]) if v.get("dtype") else None,
                 tuple(v.get("shape", ()))) for v in values]

    return {name: {"ops": sub.get("ops"), "params": sub.get("params"),
                   "inputs": sig(sub["inputs"]), "outputs": sig(sub["outputs"]),
                   "lines": list(sub.get("lines", []))} for name, sub in subgraphs.items()}


def _own_exception(e: ModelError) -> BaseException:
    """The model's own exception class, rebuilt where it can be imported, else `e`."""
    try:
        cls = importlib.import_module(e.module)
        for part in e.qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            return cls(*e.exc_args)
    except Exception:  # not importable or not constructible from its arguments
        log.debug("cannot rebuild %s.%s", e.module, e.qualname, exc_info=True)
    return e


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return a is b


def _to_torch(out: Any):
    def conv(x):
        return torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x

    if isinstance(out, list):
        return [_to_torch(x) for x in out]
    return tree_map(conv, out)
