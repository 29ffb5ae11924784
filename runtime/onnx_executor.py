"""Runs compiled regions as ONNX Runtime sessions (numpy and onnxruntime only, no torch).

The host program calls a region through `caller` once per region it enters, and regions
are small, so the per-call path is kept to one dict lookup, the region's run with its
names bound once (`_bind`) and the session's C++ `run`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading

import numpy as np
import onnx
import onnxruntime as ort

from dycomp.runtime.errors import ArtifactError
from dycomp.runtime.onnx_layout import across_branches, all_nodes, static_shapes

log = logging.getLogger(__name__)

# Every session run gets these options (the defaults, made once). A run given None makes
# its own: 2.4-2.9 us more per call here, ~9 % of nested_if or moe (benchmarks/README.md,
# session of 2026-12-07). Shared by every session and thread: nothing ever sets them.
RUN_OPTIONS = ort.RunOptions()

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


class OnnxExecutor:
    """One `onnxruntime.InferenceSession` per region. Thread-safe (sessions are; the
    executor holds no per-call state).

    `models` maps region name -> ONNX model as bytes, or a path to a `.onnx` file.
    `threads`: intra-op threads of every session, or a per-region plan (missing: 1).
    `traced`: per fused subgraph, its traced model (bytes) and the regions its ids name
    (`dycomp.runtime.onnx_paths`); loaded on the first `run_with_path`."""

    def __init__(self, models: dict[str, bytes | str | os.PathLike],
                 threads: int | dict[str, int] = 2,
                 traced: dict[str, tuple[bytes, list[str]]] | None = None):
        plan = thread_plan(models, threads)
        self.models = dict(models)
        self.threads = plan
        self.sessions: dict[str, ort.InferenceSession] = {}
        failed = {}
        for name, model in self.models.items():
            try:
                self.sessions[name] = new_session(model, plan[name])
            except Exception as e:  # report every region ONNX Runtime cannot load at once
                failed[name] = str(e).strip().splitlines()[0][:300]
        if failed:
            err = ArtifactError(f"onnxruntime {ort.__version__} cannot load {len(failed)} "
                                "subgraph(s):\n" + "\n".join(f"  {n}: {why}"
                                                               for n, why in failed.items()))
            err.failed = failed  # region -> ONNX Runtime's reason
            raise err
        # region -> (C++ run, output names, input names, input numpy dtypes), and the run
        # bound to them as a function of the inputs
        self._calls = {name: _call_spec(s) for name, s in self.sessions.items()}
        self._bound = {name: _bind(call, name) for name, call in self._calls.items()}
        self.traced = dict(traced or {})
        self._traced_calls: dict = {}
        self._lock = threading.Lock()

    def __call__(self, region: str, *args) -> tuple[np.ndarray, ...]:
        _arity(region, self._calls[region][2], args)
        return tuple(self._bound[region](*args))

    def caller(self, error):
        """`R(region, *args)` for a host program: the region's bound session call in one
        frame (outputs as a list), a failure raised as `error(region, e)`."""
        bound = self._bound

        def R(region, *args):
            try:
                return bound[region](*args)
            except Exception as e:
                raise error(region, e) from e

        return R

    def run_with_path(self, region: str, *args) -> tuple[tuple, list[str]]:
        """Outputs, and the regions run: `[region]`, or for a fused subgraph the regions
        of the host program it replaced, as that program would have run them."""
        if region not in self.traced:
            return self(region, *args), [region]
        model, ran = self.traced[region]
        with self._lock:
            if region not in self._traced_calls:
                self._traced_calls[region] = _bind(_call_spec(
                    self._new_session(model, region)), region)
            call = self._traced_calls[region]
        _arity(region, self._calls[region][2], args)
        *outs, ids = call(*args)
        return tuple(outs), [ran[i] for i in ids.tolist()]

    def _new_session(self, model, region: str) -> ort.InferenceSession:
        return new_session(model, self.threads[region])


def thread_plan(models: dict, threads: int | dict[str, int]) -> dict[str, int]:
    """Intra-op threads per region: `threads` for all, or a per-region plan (missing: 1)."""
    plan = threads if isinstance(threads, dict) else dict.fromkeys(models, threads)
    plan = {name: plan.get(name, 1) for name in models}
    if not all(isinstance(t, int) and t >= 1 for t in plan.values()):
        raise ValueError(f"threads must be positive ints, got {threads!r}")
    return plan


def _bind(call, region: str):
    """`call`'s session run as a function of the region's inputs, outputs as a list. A
    host program spends most of its own time around region calls; binding the names and
    output list once leaves a dict display per call. Inputs go to the session as they
    are (arrays of the right dtype: the entry points check the program's inputs, and
    region outputs are); only when it refuses them are they converted and run again: a
    Python scalar a host loop computed, say. `np.asarray(x, dtype)` up front cost
    1.0-1.6 % of a call of nested_if, moe or act (benchmarks/README.md, 2026-12-07)."""
    run, outputs, names, dtypes = call
    options = RUN_OPTIONS
    if len(names) == 1:
        ((name,), (dtype,)) = names, dtypes

        def call_one(x):
            try:
                return run(outputs, {name: x}, options)
            except Exception:
                if _exact((x,), dtypes):
                    raise
                return run(outputs, {name: np.asarray(x, dtype)}, options)

        return call_one

    def call_many(*args):
        _arity(region, names, args)
        try:
            return run(outputs, dict(zip(names, args)), options)
        except Exception:
            if _exact(args, dtypes):
                raise
            return run(outputs, dict(zip(names, map(np.asarray, args, dtypes))), options)

    return call_many


def _exact(args: tuple, dtypes: tuple) -> bool:
    """Whether every arg is an array of its dtype (nothing to convert)."""
    return all(type(a) is np.ndarray and a.dtype == d for a, d in zip(args, dtypes))


def _arity(region: str, names: tuple, args: tuple) -> None:
    if len(args) != len(names):
        raise TypeError(f"subgraph {region} takes {len(names)} inputs, got {len(args)}")


def new_session(model: bytes | str | os.PathLike, threads: int,
                options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A CPU session for `model` (bytes or a path) with dycomp's options (or `options`,
    which it changes: give each session its own).

    A model with `If`s whose arms ONNX Runtime computes in its blocked NCHWc layout runs
    as `blocked_across_branches` rewrites it: policy_net (8 gated residual blocks) 1.11x
    -> 1.03x the time of one static graph of the same path, multi_exit 1.13x -> 1.02x."""
    model = os.fspath(model) if isinstance(model, os.PathLike) else model
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    options = options or session_options(threads, long_run=long_running(proto))
    session, relaid = blocked_across_branches(model, options, proto)
    return session if relaid is None else relaid_session(session, relaid, options)


def relaid_session(session: ort.InferenceSession, relaid: onnx.ModelProto,
                   options: ort.SessionOptions) -> ort.InferenceSession:
    """The session of `blocked_across_branches`' rewrite (already optimized: loaded with
    `options` at ORT_DISABLE_ALL), or `session` if ONNX Runtime refuses it."""
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return cpu_session(relaid.SerializeToString(), options)
    except Exception as e:  # a rewrite ONNX Runtime refuses is a dycomp bug: say, go on
        log.warning("dycomp: ONNX Runtime refused the NCHWc rewrite (%s); running its own "
                    "graph", str(e).strip().splitlines()[0][:300])
        return session


def blocked_across_branches(model: bytes | str | os.PathLike, options: ort.SessionOptions,
                            proto: onnx.ModelProto | None = None
                            ) -> tuple[ort.InferenceSession, onnx.ModelProto | None]:
    """A session for `model` (`proto`: the same, parsed), and when it has `If`s and
    convolutions, the model ONNX Runtime optimized for this CPU with blocked values
    crossing `If` boundaries (`dycomp.runtime.onnx_layout`; None when that changes
    nothing)."""
    model = os.fspath(model) if isinstance(model, os.PathLike) else model
    if proto is None:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    ops = {n.op_type for n in all_nodes(proto.graph)}
    if not {"If", "Conv"} <= ops or os.environ.get("DYCOMP_NCHWC_ACROSS_BRANCHES") == "0":
        return cpu_session(model, options), None
    with tempfile.TemporaryDirectory() as d:
        options.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        session = cpu_session(model, options)
        options.optimized_model_filepath = ""
        try:
            optimized = onnx.load(os.path.join(d, "optimized.onnx"))
            changed = across_branches(optimized, static_shapes(proto))
        except Exception as e:  # an optimization, never a reason to fail: say, go on
            log.warning("dycomp: no NCHWc rewrite (%s: %s); running ONNX Runtime's own "
                        "graph", type(e).__name__, e)
            return session, None
    return session, optimized if changed else None


# ONNX Runtime graph rewrites dycomp turns off. `SkipLayerNormFusion`: its CPU kernel
# takes 450-480 us on a [1, 128, 768] BERT activation where the Add + LayerNormalization it
# replaces take 42-72 us (1 and 2 threads); PABEE-BERT 0.90x, DeeBERT 0.88x the time
# without it, outputs within 2e-6 (benchmarks/README.md, 2026-12-08).
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def cpu_session(model, options: ort.SessionOptions) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for `model` (bytes or a path) with `options`, less the
    graph rewrites in `DISABLED_OPTIMIZERS`."""
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


# A subgraph holding this many weights runs long enough (a ViT, a BERT layer: 5-30 M
# weights, 20-200 ms a run on 2 busy cores) that its worker threads are better asleep
# than spinning long between parallel sections: see `session_options`.
LONG_RUN_WEIGHTS = 1 << 22
# Off by default (ONNX Runtime's own spinning): on an idle machine unbounded spinning is
# faster (A-ViT 0.937x, DynamicViT 0.956x the time of the 20 us bound, load 1.0). On a
# CPU shared with other busy processes, DYCOMP_SPIN_US=20 halves these models' time.
SHORT_SPIN_US = int(os.environ.get("DYCOMP_SPIN_US", "0") or 0) or None


def long_running(proto: onnx.ModelProto) -> bool:
    """Whether a model's weights (initializers, subgraphs' included) reach
    `LONG_RUN_WEIGHTS`."""
    graphs = [proto.graph]
    weights = 0
    while graphs:
        g = graphs.pop()
        weights += sum(int(np.prod(t.dims)) for t in g.initializer)
        graphs.extend(a.g for n in g.node for a in n.attribute if a.HasField("g"))
    return weights >= LONG_RUN_WEIGHTS


def session_options(threads: int, long_run: bool = False) -> ort.SessionOptions:
    """dycomp's session options; `long_run` with `SHORT_SPIN_US` set (environment
    variable DYCOMP_SPIN_US): workers spin at most that many microseconds
    between parallel sections, then sleep, for long-running subgraphs on a CPU shared
    with other work, where spinning workers hold cores that the main thread and the
    workers themselves need. In-process A/B against unbounded spinning
    (benchmarks/corpus/profile_regions.py, variants `spinning`, `spin20`, `no_spin`; 2
    cores; outputs identical): under a load of 5-8, A-ViT 0.45-0.57x the time,
    DynamicViT 0.65x (no spinning at all: A-ViT 0.49-0.58x, DynamicViT 0.50-0.59x,
    PABEE-BERT 0.52x, DeeBERT 0.68-0.76x); under a load of 2.5, A-ViT 1.09x (no spinning
    at all 1.28x), DynamicViT 0.54x. Short runs lose by any bound (the universal
    transformer's 0.5 ms loop: 1.06-1.26x with 20 us, 1.38x with none), hence weights."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: unused-initializer warnings are noise here
    if threads > 1:
        # Every session owns a pool whose workers spin after a run, competing with the
        # next region's session, and with PyTorch's threads in the same process. Stopping
        # the spin at the end of each run: gated_resnet (37 regions, 2 cores) 6 ms ->
        # 0.75 ms; eager convolutions run 3x slower beside a spinning session. Waking the
        # workers costs ~40 us per run (multi_exit r0: 0.065 ms spinning, 0.107 stopped).
        so.add_session_config_entry("session.force_spinning_stop", "1")
        if long_run and SHORT_SPIN_US:
            so.add_session_config_entry("session.intra_op.spin_duration_us",
                                        str(SHORT_SPIN_US))
    return so


def _call_spec(sess: ort.InferenceSession):
    inputs = []
    for i in sess.get_inputs():
        dtype = _ORT_DTYPES.get(i.type)
        if dtype is None:
            raise ArtifactError(f"subgraph input {i.name} has unsupported type {i.type}")
        # a dtype, not a type: np.asarray converts a type on every call (~0.4 us)
        inputs.append((i.name, np.dtype(dtype)))
    # InferenceSession.run re-validates names and ownership on every call (5-8 us on an
    # AVX2 EPYC); the feeds built here are always complete: call the C++ run directly.
    run = getattr(getattr(sess, "_sess", None), "run", None) or sess.run
    names, dtypes = zip(*inputs) if inputs else ((), ())
    return run, [o.name for o in sess.get_outputs()], names, dtypes
