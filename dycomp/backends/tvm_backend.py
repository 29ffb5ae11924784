"""TVM backend: regions -> ONNX -> Relax -> one compiled library, tuned with MetaSchedule.

Every region is imported from its ONNX export (the same models the ONNX backend runs) and
becomes one function of a single IRModule, so the library and its constants load once.
Untuned TVM CPU code is ~70x slower than ONNX Runtime (measured, benchmarks/README.md), so
`TuneConfig` runs MetaSchedule over the module's tasks with a persistent tuning database:
tasks already in the database are not tuned again. A region TVM cannot import or build
runs on ONNX Runtime instead (`strict=True` makes that an error naming every op).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from dycomp.backends.onnx_backend import (
    DEFAULT_OPSET,
    all_nodes,
    export_regions,
    quiet,
    regions_error,
    thread_plan,
)
from dycomp.backends.tvm_rpc import RpcAddress, rpc_runner
from dycomp.errors import DycompError, UnsupportedError
from dycomp.runtime.host import RoutingExecutor
from dycomp.runtime.onnx_executor import OnnxExecutor
from dycomp.runtime.tvm_executor import TvmExecutor, import_tvm

log = logging.getLogger(__name__)

#: Seconds a candidate's build may take. MetaSchedule's 30 s includes TVM's lazy imports
#: in each fresh build worker: on a loaded 2-core machine every build timed out and the
#: task was recorded as tuned with no valid schedule (measured 2026-12-07).
BUILD_TIMEOUT = 120.0


def default_db() -> Path:
    """The tuning database used when none is given: the user's cache directory."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "dycomp" / "tvm-tuning"


@dataclass(frozen=True)
class TuneConfig:
    """MetaSchedule tuning for `backend="tvm"`.

    trials: measured candidates per tuning task (0: only reuse the database); a task the
    database holds from tuning with at least `trials` is reused, one tuned with fewer is
    tuned again, seeded with its records. db: the tuning database directory, shared by
    every compile for the same CPU (default `default_db()`). seed: the search's seed.
    rpc: 'host:port:key' of a TVM RPC tracker: candidates are measured on the servers
    registered under key (built here; same database), see `dycomp.backends.tvm_rpc`."""

    trials: int = 64
    db: str | os.PathLike | None = None
    seed: int = 0
    rpc: str | None = None

    def __post_init__(self):
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 0:
            raise ValueError(f"TuneConfig.trials must be an int >= 0, got {self.trials!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"TuneConfig.seed must be an int, got {self.seed!r}")
        if self.rpc is not None:
            RpcAddress.parse(self.rpc)

    @property
    def path(self) -> Path:
        return Path(self.db) if self.db is not None else default_db()


@dataclass
class TvmReport:
    """What the TVM backend did: regions on TVM and on ONNX Runtime (with the reason),
    tuning tasks found, reused from the database and tuned now, seconds spent."""

    tvm: list[str] = field(default_factory=list)
    fallback: dict[str, str] = field(default_factory=dict)
    tuned: bool = False
    tasks: int = 0
    reused: int = 0
    tuned_now: int = 0
    tune_seconds: float = 0.0
    build_seconds: float = 0.0
    db: str | None = None

    def summary(self) -> str:
        parts = [f"{len(self.tvm)} region(s) on TVM"]
        if self.fallback:
            parts.append(f"{len(self.fallback)} on ONNX Runtime (TVM cannot compile them: "
                         + "; ".join(f"{r}: {why}" for r, why in self.fallback.items()) + ")")
        if self.tuned:
            parts.append(f"tuned: {self.tasks} tasks, {self.reused} reused from {self.db}, "
                         f"{self.tuned_now} tuned in {self.tune_seconds:.0f} s")
        else:
            parts.append("UNTUNED (TVM's default schedules; expect code far slower than ONNX "
                         "Runtime: pass --tune-trials N / tune=TuneConfig(trials=N))")
        return ", ".join(parts)


def host_target(threads: int = 2):
    """An LLVM target for this machine's CPU (`-mcpu=native` is not accepted)."""
    tvm = import_tvm()
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": threads})


def lower_tvm(graph, threads: int = 2, tune: TuneConfig | None = None, strict: bool = False,
              opset: int = DEFAULT_OPSET):
    """An executor for the graph's regions: TVM for those it compiles, ONNX Runtime for the
    rest. The executor carries `.library` (the shared library's bytes), `.models` (ONNX
    models of fallback regions), `.placement` (region -> backend) and `.report`."""
    models = export_regions(graph, opset)
    report = TvmReport()
    funcs = _import_regions(graph, report.fallback)
    if strict and report.fallback:
        raise _unsupported(graph, report.fallback)
    library = None
    if funcs:
        library = _build(funcs, host_target(threads), tune, report, strict, graph)
    report.tvm = [n for n in graph.regions if n not in report.fallback]
    routes, plan = {}, dict.fromkeys(report.tvm, threads)
    if report.tvm:
        signatures = {n: _signature(graph.regions[n].onnx) for n in report.tvm}
        tvm_exec = TvmExecutor(library, signatures, threads=threads)
        routes.update(dict.fromkeys(report.tvm, tvm_exec))
    fallback_models = {n: models[n] for n in report.fallback}
    if fallback_models:
        onnx_plan = thread_plan(graph, threads)
        onnx_exec = OnnxExecutor(fallback_models,
                                 threads={n: onnx_plan[n] for n in fallback_models})
        routes.update(dict.fromkeys(fallback_models, onnx_exec))
        plan.update(onnx_exec.threads)
    executor = RoutingExecutor(routes)
    executor.library, executor.models, executor.report = library, fallback_models, report
    executor.placement = {n: "onnx" if n in report.fallback else "tvm" for n in graph.regions}
    executor.threads = plan  # per region, as its executor runs it
    log.info("tvm backend: %s", report.summary())
    return executor


# -- import -----------------------------------------------------------------------------------
def _import_regions(graph, failed: dict[str, str]) -> dict:
    """Region name -> Relax function, for every region TVM's ONNX importer accepts;
    the others go to `failed` with the reason (every unsupported op, when known)."""
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map())
    funcs = {}
    for name, region in graph.regions.items():
        missing = sorted({n.op_type for n in all_nodes(region.onnx.graph)} - supported)
        if missing:
            failed[name] = f"no TVM importer for ONNX op(s) {', '.join(missing)}"
            continue
        mod, why = _attempt(from_onnx, region.onnx, keep_params_in_input=False)
        if why is not None:
            failed[name] = f"TVM's ONNX importer failed: {why}"
            continue
        funcs[name] = mod["main"].with_attr("global_symbol", name)
    return funcs


def _signature(model: onnx.ModelProto) -> tuple[list[str], int]:
    dtypes = [np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)).name
              for i in model.graph.input]
    return dtypes, len(model.graph.output)


# -- build ------------------------------------------------------------------------------------
def _build(funcs: dict, target, tune: TuneConfig | None, report: TvmReport, strict: bool,
           graph) -> bytes | None:
    """Compile the functions into one library (bytes). A region whose function fails to
    build moves to `report.fallback` and the rest is built again."""
    tvm = import_tvm()
    while funcs:
        try:
            with quiet((1, 2)):
                mod = _prepare(tvm.IRModule(dict(funcs)), target)
        except Exception as e:
            _drop_failing(funcs, _prepare, target, e, report, strict, graph)
            continue
        database = _tune(mod, target, tune, report) if tune is not None else None
        start = time.perf_counter()
        try:
            with quiet((1, 2)):
                library = _compile(mod, target, database)
        except Exception as e:
            _drop_failing(funcs, _build_one, target, e, report, strict, graph)
            continue
        report.build_seconds = time.perf_counter() - start
        return library
    return None


def _drop_failing(funcs: dict, step, target, error: Exception, report: TvmReport,
                  strict: bool, graph) -> None:
    """After `step` (`_prepare` or `_build_one`) failed on the whole module: move every
    function it fails on alone to the fallback list (re-raise if none: the failure is not
    a region's)."""
    tvm = import_tvm()
    bad = {}
    for name, fn in funcs.items():
        _, why = _attempt(step, tvm.IRModule({name: fn}), target)
        if why is not None:
            bad[name] = why
    if not bad:
        raise error
    for name, why in bad.items():
        report.fallback[name] = f"TVM cannot build it: {why}"
        funcs.pop(name)
    if strict:
        raise _unsupported(graph, report.fallback) from error


def _build_one(mod, target) -> bytes:
    return _compile(_prepare(mod, target), target, None)


def _prepare(mod, target):
    """Legalize and fuse: the form whose kernels are MetaSchedule's tuning tasks."""
    tvm = import_tvm()
    from tvm import relax

    with target:
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)


def _compile(mod, target, database) -> bytes:
    """Schedules from the database (where it has them), lowering, codegen; the exported
    shared library's bytes. Kernels without a tuned schedule keep TVM's default lowering:
    its search-free CPU rules (dlight GEMV/Reduction) made untuned policy_net 3.5 -> 7.5
    ms and moe 0.065 -> 0.196 ms here."""
    tvm = import_tvm()
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0)
    def pipeline(mod, _ctx):
        if database is not None:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        return tvm.transform.Sequential(cpu.dataflow_lower_passes(target)
                                        + cpu.finalize_passes(target))(mod)

    with contextlib.ExitStack() as stack:
        stack.enter_context(target)
        if database is not None:
            stack.enter_context(database)
        stack.enter_context(tvm.transform.PassContext(opt_level=3))
        exe = relax.build(mod, target=target, relax_pipeline=pipeline)
    with tempfile.TemporaryDirectory(prefix="dycomp-tvm-build-") as tmp:
        path = os.path.join(tmp, "regions.so")
        exe.export_library(path)
        return Path(path).read_bytes()


# -- tuning -----------------------------------------------------------------------------------
def _tune(mod, target, cfg: TuneConfig, report: TvmReport):
    """The tuning database, after tuning every task it has no record of."""
    from tvm.s_tir import meta_schedule as ms

    db_dir = cfg.path
    try:
        db_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(db_dir, os.W_OK)
    except OSError as e:
        writable, why = False, str(e)
    else:
        why = "not writable"
    if not writable:
        raise DycompError(f"tuning database {db_dir}: {why}; choose another directory "
                          "(TuneConfig(db=...), --tune-db)")
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    tasks = ms.relax_integration.extract_tasks(mod, target)
    # Reuse a task already tuned with at least this many trials (even if none of its
    # candidates built: trying again would fail again); tune the others, seeded with
    # whatever records the database has for them.
    budgets = _Budgets(db_dir)
    todo = [t for t in tasks if budgets.get(t.dispatched[0]) < cfg.trials]
    report.tuned, report.db = True, str(db_dir)
    report.tasks, report.reused = len(tasks), len(tasks) - len(todo)
    if not todo:
        return database
    start = time.perf_counter()
    with (tempfile.TemporaryDirectory(prefix="dycomp-tune-") as work, _tuning_env(),
          _unnamed_handlers_detached(MS_LOGGER)):
        logging.getLogger(MS_LOGGER).setLevel(logging.WARNING)  # its console
        runner = rpc_runner(cfg.rpc) if cfg.rpc else ms.runner.LocalRunner()
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            todo, work, strategy=_search(cfg.trials), num_threads=_num_threads(target),
            seed=cfg.seed)
        with _TuneProgress(len(todo), cfg.trials) as progress:
            ms.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=work,
                max_trials_global=cfg.trials * len(todo), max_trials_per_task=cfg.trials,
                num_trials_per_iter=min(64, cfg.trials), database=database,
                measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                   progress.callback()],
                builder=ms.builder.LocalBuilder(max_workers=_num_threads(target),
                                                timeout_sec=BUILD_TIMEOUT),
                runner=runner)
    budgets.record([t.dispatched[0] for t in todo], cfg.trials)
    report.tuned_now = len(todo)
    report.tune_seconds = time.perf_counter() - start
    return database


class _Budgets:
    """The trials each workload of a tuning database was tuned with, kept beside it
    (`dycomp_trials.json`: structural hash -> trials)."""

    FILE = "dycomp_trials.json"

    def __init__(self, db_dir: Path):
        self.path = db_dir / self.FILE
        try:
            self.trials = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.trials = {}

    @staticmethod
    def key(mod) -> str:
        from tvm.s_tir.meta_schedule.utils import shash2hex

        return shash2hex(mod)

    def get(self, mod) -> int:
        return int(self.trials.get(self.key(mod), 0))

    def record(self, mods, trials: int) -> None:
        for mod in mods:
            self.trials[self.key(mod)] = max(trials, self.get(mod))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.trials, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def _num_threads(target) -> int:
    return int(target.attrs.get("num-cores", 2))


@contextlib.contextmanager
def _tuning_env():
    """MetaSchedule builds candidates in fresh worker processes, and tvm_ffi imports torch
    when it can: 2.8 s per worker start instead of 0.8 s. Hide torch from them (a
    `torch` package that raises ImportError, first on PYTHONPATH)."""
    with tempfile.TemporaryDirectory(prefix="dycomp-notorch-") as shim:
        pkg = Path(shim) / "torch"
        pkg.mkdir()
        (pkg / "__init__.py").write_text(
            'raise ImportError("torch is hidden from TVM tuning workers by dycomp")\n')
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([shim, *filter(None, [old])])
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old


MS_LOGGER = "tvm.s_tir.meta_schedule"


@contextlib.contextmanager
def _unnamed_handlers_detached(name: str):
    """MetaSchedule rebuilds its loggers with `logging.config.dictConfig`, naming every
    handler already on its logger: one without a name (pytest's capture handler, a user's
    `addHandler(StreamHandler())`) makes it fail (`None.format`). Detach those while
    tuning, and put them back."""
    logger = logging.getLogger(name)
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for h in unnamed:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in unnamed:
            logger.addHandler(h)


def _search(trials: int):
    """Evolutionary search sized to the trial budget: MetaSchedule's default population
    (512, 4 genetic rounds) costs ~10 s per task and batch on 2 cores, which dominates
    when only a few candidates per task are measured."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(64, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=min(50, population),
        genetic_num_iters=2 if trials < 32 else 4)


class _TuneProgress:
    """A rich progress bar (stderr) of trials measured and tasks done, with elapsed time."""

    def __init__(self, tasks: int, trials: int):
        self.tasks, self.trials = tasks, trials
        self.done: dict[int, int] = {}

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(TextColumn("tuning {task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.__enter__()
        self.id = self.bar.add_task(f"0/{self.tasks} tasks", total=self.tasks * self.trials)
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def callback(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

        outer = self

        @derived_object
        class Callback(PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                      runner_results):
                outer.update(task_id, len(measure_candidates))

        return Callback()

    def update(self, task_id: int, n: int) -> None:
        self.done[task_id] = min(self.trials, self.done.get(task_id, 0) + n)
        finished = sum(v >= self.trials for v in self.done.values())
        self.bar.update(self.id, completed=sum(self.done.values()),
                        description=f"{finished}/{self.tasks} tasks")


def _attempt(fn, *args, **kwargs):
    """`fn(...)` with TVM's output silenced: (result, None), or (None, the reason it failed)."""
    with quiet((1, 2)):
        try:
            return fn(*args, **kwargs), None
        except Exception as e:
            why = _reason(e)
        gc.collect()  # TVM warns (on stderr) when it frees a failed import's builder
    return None, why


# -- errors -----------------------------------------------------------------------------------
def _reason(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
    return text.strip()[:300] or type(e).__name__


def _unsupported(graph, failed: dict[str, str]) -> UnsupportedError:
    err = regions_error(graph, failed, "TVM cannot compile",
                        hint="drop --strict to run them on ONNX Runtime, or use "
                             "backend='onnx'")
    err.regions = dict(failed)
    return err
