"""Sub-networks' ONNX Runtime sessions over one shared weight store, created when first
called and at most N alive (numpy and onnxruntime only, never torch).

A supernet compiled or loaded with selectors (`dycomp.runtime.selectors`) keeps every
sub-network's ONNX models stripped: their large tensors refer to one store
(`dycomp.runtime.shared_weights`: a `WeightStore` in memory after compiling, a memory
map of `weights.bin` after loading). `LazyOnnxExecutor` creates a region's session on
its first call: the main graph's stored tensors go to ONNX Runtime as `OrtValue`s over
the store's own bytes (`SessionOptions.add_external_initializers`; the model's bytes are
never rebuilt with its weights), tensors of nested `If` / `Loop` bodies are put back into
the model. ONNX Runtime copies them into the session: `add_initializer`, which would
not, applies after graph optimizations, and the optimizers (constant folding, fusions)
read the model's own tensors, so it fails on stripped ones. A live session costs about
1.4x its weights (its copy, plus GEMM weights pre-packed; benchmarks/README.md, SN-Net),
hence `dycomp.runtime.live_pool.LivePool`: the sessions of the least recently used
sub-networks beyond its limit are released, and created again on their next call.
"""

from __future__ import annotations

import logging
import threading

import onnx
import onnxruntime as ort

from dycomp.runtime.errors import ArtifactError
from dycomp.runtime.onnx_executor import (
    OnnxExecutor,
    _bind,
    _call_spec,
    blocked_across_branches,
    long_running,
    relaid_session,
    session_options,
    thread_plan,
)
from dycomp.runtime.shared_weights import _inline_one, nested_tensors, parse, tensor_array

log = logging.getLogger(__name__)


def shared_session(model: bytes, threads: int, weights, where: str) -> ort.InferenceSession:
    """A session for the stripped `model` whose stored tensors come from `weights` (the
    OrtValues handed over are copied at load: nothing of them must outlive it)."""
    proto = parse(model, where)
    options = session_options(threads, long_run=long_running(proto))
    names, values = [], []
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names.append(t.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(tensor_array(t, weights, where)))
    if names:
        options.add_external_initializers(names, values)
    for t in nested_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _inline_one(t, weights, where)
    return _blocked_session(proto, threads, options)


def _blocked_session(proto: onnx.ModelProto, threads: int,
                     options: ort.SessionOptions) -> ort.InferenceSession:
    """`new_session`'s session for `proto`, its NCHWc rewrite across `If` branches
    (`blocked_across_branches`) loaded with fresh options: the rewritten model holds its
    weights, and the given options' external initializers name tensors it no longer has."""
    session, relaid = blocked_across_branches(proto.SerializeToString(), options, proto)
    if relaid is None:
        return session
    return relaid_session(session, relaid, session_options(threads,
                                                           long_run=long_running(proto)))


class LazyOnnxExecutor(OnnxExecutor):
    """An `OnnxExecutor` over stripped models whose sessions are created on a region's
    first call (`weights`: the store they refer to) and dropped by `release()`."""

    def __init__(self, models: dict[str, bytes], threads: int | dict[str, int] = 2,
                 traced: dict[str, tuple[bytes, list[str]]] | None = None, *, weights=None,
                 where: str = ""):
        self.threads = thread_plan(models, threads)
        self.models, self.weights, self.where = dict(models), weights, where
        self.traced = dict(traced or {})
        self.sessions: dict[str, ort.InferenceSession] = {}
        self._calls: dict = {}
        self._traced_calls: dict = {}
        self._bound = {name: self._first(name) for name in self.models}
        self._lock = threading.Lock()

    @property
    def live(self) -> bool:
        """Whether any session of this executor is alive."""
        return bool(self.sessions or self._traced_calls)

    def _first(self, region: str):
        def first(*args):
            return self._load(region)(*args)
        return first

    def _load(self, region: str):
        """The region's bound call, its session created if it has none."""
        with self._lock:
            if region not in self._calls:
                session = self._new_session(self.models[region], region)
                self.sessions[region] = session
                self._calls[region] = _call_spec(session)
                self._bound[region] = _bind(self._calls[region], region)
                log.debug("created the session of %s%s", self.where, region)
            return self._bound[region]

    def _new_session(self, model: bytes, region: str):
        where = f"{self.where}{region}"
        try:
            return shared_session(model, self.threads[region], self.weights, where)
        except ArtifactError:
            raise
        except Exception as e:  # ONNX Runtime refused the model
            raise ArtifactError(f"onnxruntime {ort.__version__} cannot load subgraph "
                                f"{where}: {str(e).strip().splitlines()[0][:300]}") from None

    def release(self) -> None:
        """Drop every session (a later call creates them again)."""
        with self._lock:
            self.sessions.clear()
            self._calls.clear()
            self._traced_calls.clear()
            for name in self.models:
                self._bound[name] = self._first(name)

    def __call__(self, region: str, *args):
        if region not in self._calls:
            self._load(region)
        return super().__call__(region, *args)

    def run_with_path(self, region: str, *args):
        if region in self.traced and region not in self._calls:
            self._load(region)
        return super().run_with_path(region, *args)
