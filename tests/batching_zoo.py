"""Shared by the batching tests and `benchmarks/batching_exact.py`: zoo artifacts compiled
once per process, requests from `sample_inputs`, and the batched-vs-one-at-a-time check."""

from __future__ import annotations

import atexit
import functools
import random
import tempfile
import time
from pathlib import Path

import numpy as np

import dycomp
import dycomp.runtime as rt
from dycomp.runtime.batching import run_batch
from examples.zoo import ZOO

_TMP = tempfile.TemporaryDirectory(prefix="dycomp-batching-")
atexit.register(_TMP.cleanup)


@functools.cache
def zoo_artifact(name: str, fuse: bool = True):
    """(CompiledModel, loaded runtime Artifact) of a zoo example, backend onnx."""
    mod = ZOO[name]
    model, example = mod.make()
    cm = dycomp.compile(model, example, backend="onnx", check=False, method=mod.METHOD,
                        fuse_branches=fuse, batch_variants=True)
    path = Path(_TMP.name) / f"{name}-{int(fuse)}.dyc"
    cm.save(path)
    return cm, rt.load(path)


def requests(name: str, n: int, seed: int = 0) -> list[tuple]:
    """`n` requests (numpy tuples) covering the example's paths."""
    return [tuple(t.numpy() for t in inp) for inp in ZOO[name].sample_inputs(n, seed=seed)]


def same(a, b, tol: float = 1e-4) -> bool:
    """Same structure, types, dtypes, shapes; arrays within fp32 tolerance."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and (
            np.allclose(a, b, rtol=tol, atol=tol, equal_nan=True) if a.dtype.kind in "fc"
            else np.array_equal(a, b))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a == b or a != a and b != b)


def batched_vs_single(art, reqs: list[tuple], seed: int = 0, max_batch: int = 8,
                      times: list | None = None, stats: dict | None = None):
    """Run `reqs` in random batches of 1..max_batch with `run_batch` (paths included) and
    one at a time; returns (mismatching request indices, distinct paths, batch count).
    `times` gets the seconds of both ways (one at a time, batched); `stats` the region
    call counts of `run_batch`."""
    run_batch(art, reqs[:2])  # loads the rows variants' sessions, outside the timing
    t0 = time.perf_counter()
    single = [art.run(*r, return_path=True) for r in reqs]
    t1 = time.perf_counter()
    rng, batched, i, batches = random.Random(seed), [], 0, 0
    while i < len(reqs):
        b = rng.randint(1, max_batch)
        batched += run_batch(art, reqs[i:i + b], return_path=True, stats=stats)
        i, batches = i + b, batches + 1
    if times is not None:
        times += [t1 - t0, time.perf_counter() - t1]
    bad = [k for k, (s, t) in enumerate(zip(single, batched))
           if not (same(s[0], t[0]) and s[1] == t[1])]
    return bad, len({p for _, p in single}), batches
