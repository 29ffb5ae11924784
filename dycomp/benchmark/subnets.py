"""`dycomp.bench(..., selectors=...)`: one row per sub-network of a model with selectors.

The model is compiled once with `selectors` (every declared combination), then each
sub-network is checked and timed against eager PyTorch configured the same way (the
selector argument passed, or the setter called and the model's state restored after).
Per sub-network: parameters, median ms of eager and of dycomp (interleaved rounds, each
running the inputs as one block), speedup, the share of inputs answered unlike eager
and, given labels, the top-1 accuracy of both. The dycomp medians are the table
`select(budget_ms)` chooses from (`store_latency` writes them into a saved artifact).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from dycomp.errors import DycompError


class LabelsError(DycompError):
    """Labels that do not fit the inputs or the model's outputs (a usage error)."""

    exit_code = 2


@dataclass
class SubnetRow:
    """One sub-network's figures."""

    label: str  # e.g. "width=0.5"
    values: dict  # selector name -> declared value
    params: int
    eager_ms: float
    dycomp_ms: float
    wrong: float  # fraction of inputs dycomp answered unlike eager
    eager_acc: float | None = None  # top-1, given labels
    dycomp_acc: float | None = None

    @property
    def speedup(self) -> float:
        return self.eager_ms / self.dycomp_ms if self.dycomp_ms else float("nan")


@dataclass
class SubnetBenchResult:
    model: str
    backend: str
    threads: int
    inputs: int
    runs: int
    environment: dict
    selectors: list[dict]
    rows: list[SubnetRow]
    compile_s: float
    compiled: object = field(default=None, repr=False)  # the SelectorModel

    @property
    def has_accuracy(self) -> bool:
        return any(r.dycomp_acc is not None for r in self.rows)

    def latency(self) -> dict[str, float]:
        """{sub-network label: dycomp median ms}: the table `select` uses."""
        return {r.label: r.dycomp_ms for r in self.rows}

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "compiled"}
        data["rows"] = [{**asdict(r), "speedup": r.speedup} for r in self.rows]
        return data

    def write(self, report_dir, plot: bytes | None = None) -> dict[str, Path]:
        from dycomp.benchmark.subnet_report import write

        return write(self, Path(report_dir), plot)


def bench_subnets(model, inputs: list, selectors: dict, *, backend: str = "onnx",
                  method: str = "forward", threads: int = 2, runs: int = 5, labels=None,
                  progress=None) -> SubnetBenchResult:
    """Compile `model.<method>` with `selectors` for `backend` and bench every sub-network
    on `inputs` (input tuples) against eager; `labels` (one class index, or one per batch
    row, per input) adds top-1 accuracy. `progress(message)` is called per step."""
    import torch

    from dycomp.api import _resolve
    from dycomp.benchmark import environment
    from dycomp.selectors import compile_selected

    inputs = [x if isinstance(x, tuple) else (x,) for x in inputs]
    if not inputs:
        raise ValueError("bench() needs at least one input tuple")
    labels = None if labels is None else _labels(labels, len(inputs))
    torch.set_num_threads(threads)
    fn = _resolve(model, method)
    owner = getattr(fn, "__self__", fn)
    say = progress or (lambda message: None)
    start = time.perf_counter()
    sm = compile_selected(owner, inputs[0], selectors, {
        "method": fn.__name__, "backend": backend, "threads": threads, "check": False},
        progress=lambda label: say(f"compile {label}"))
    compile_s = time.perf_counter() - start
    rows = []
    with torch.no_grad():
        for key in sm.subnets:
            say(f"check + time {sm.label(key)}")
            rows.append(_bench_one(sm, key, fn, owner, inputs, runs, labels))
            sm.latency[key] = rows[-1].dycomp_ms  # what sm.select(budget_ms) chooses from
    return SubnetBenchResult(type(owner).__name__, backend, threads, len(inputs), runs,
                             environment(threads), sm.selectors, rows, compile_s, sm)


def _bench_one(sm, key: tuple, fn, owner, inputs: list, runs: int, labels) -> SubnetRow:
    """Check and time sub-network `key`: eager configured like it, and dycomp."""
    from dycomp.benchmark.contenders import same_answer
    from dycomp.selectors import _configured

    kwargs, calls = {}, []
    for s, j in zip(sm.selectors, key):
        if s["kind"] == "argument":
            kwargs[s["name"]] = s["values"][j]
        else:
            calls.append(s["values"][j])
    for method, args, kw in calls:  # the compiled model's setters pick the sub-network
        getattr(sm, method)(*args, **kw)

    def eager(x):
        return fn(*x, **kwargs)

    def compiled(x):
        return sm(*x, **kwargs)

    with _configured(owner, calls):
        expected = [eager(x) for x in inputs]
        actual = [compiled(x) for x in inputs]
        times = _time({"eager": eager, "dycomp": compiled}, inputs, runs)
    wrong = sum(not same_answer(e, a) for e, a in zip(expected, actual)) / len(inputs)
    row = SubnetRow(sm.label(key), sm.values(key), int(sm.params.get(key, 0)),
                    times["eager"], times["dycomp"], wrong)
    if labels is not None:
        row.eager_acc = top1(expected, labels)
        row.dycomp_acc = top1(actual, labels)
    return row


def _time(calls: dict, inputs: list, runs: int) -> dict[str, float]:
    """Median ms per call of each callable: a warm-up pass, then `runs` rounds, each
    running every callable over all inputs as one block, in an order that alternates."""
    names = list(calls)
    for name in names:
        for x in inputs:
            calls[name](x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(runs):
        for name in names[k % len(names):] + names[:k % len(names)]:
            for x in inputs:
                start = time.perf_counter()
                calls[name](x)
                times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(ts) for name, ts in times.items()}


# -- accuracy --------------------------------------------------------------------------------
def _labels(labels, n: int) -> list[np.ndarray]:
    """One integer array per input (a class index, or one per batch row)."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise LabelsError(f"labels must be integer class indices, got dtype {arr.dtype}")
    if arr.ndim == 0 or len(arr) != n:
        raise LabelsError(f"labels hold {arr.shape[0] if arr.ndim else 'a scalar, not'} "
                          f"{'entries' if arr.ndim else 'an array'}; one per input is "
                          f"needed ({n} inputs)")
    return [np.atleast_1d(a).reshape(-1) for a in arr]


def top1(outputs: list, labels: list[np.ndarray]) -> float:
    """The share of labels equal to the argmax (last axis) of each output's logits: its
    first floating tensor (the class scores of `(logits, ...)`)."""
    correct = total = 0
    for out, want in zip(outputs, labels):
        logits = _logits(out)
        pred = logits.argmax(-1).reshape(-1)
        if pred.size != want.size:
            raise LabelsError(f"an output's class scores of shape {tuple(logits.shape)} give "
                              f"{pred.size} prediction(s) but its labels hold {want.size}")
        if want.min() < 0 or want.max() >= logits.shape[-1]:
            raise LabelsError(f"labels {want.tolist()} are not class indices of an output "
                              f"with {logits.shape[-1]} classes")
        correct += int((pred == want).sum())
        total += want.size
    return correct / total


def _logits(out) -> np.ndarray:
    from dycomp.check import tensor_leaves

    for leaf in tensor_leaves(out):
        if leaf.dtype.kind == "f" and leaf.ndim >= 1:
            return leaf
    raise LabelsError("labels were given but the model's output holds no floating tensor "
                      "of class scores to take the top-1 of")
