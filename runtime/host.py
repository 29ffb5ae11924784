"""Loading and running a synthesized host program (numpy only, no torch).

A host program arrives as data (`runtime/hostcode.py`): `HostProgram.from_data` prints
its Python with the runtime's own generator and compiles that; an artifact's `host.py`
is a readable copy, never executed."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from dycomp.runtime.errors import ArtifactError, model_error
from dycomp.runtime.host_index import slice_start
from dycomp.runtime.hostcode import generate


class Executor(Protocol):
    """Runs one compiled region: numpy arrays in, tuple of numpy arrays out."""

    def __call__(self, region: str, *args) -> tuple: ...


def load_host(source: str, filename: str = "<dycomp host program>") -> Callable:
    """Compile host program source and return its `run(R, *inputs)` function."""
    namespace = {"np": np, "math": math, "slice_start": slice_start, "__name__": "dycomp_host",
                 "_dyc_error": model_error}
    exec(compile(source, filename, "exec"), namespace)
    return namespace["run"]


class HostProgram:
    """A host program bound to an executor. Thread-safe: each call has its own state.

    `run(*inputs)` runs it; `run_path(*inputs)` also returns the regions run. `run` is
    the program function with its region caller bound (a `functools.partial`, no Python
    frame of its own: 2.5 % of a 40 us call of nested_if, moe or act). Region calls go
    through `executor.caller(error)` when the executor has one: a function that runs a
    region and turns its failure into `error(region, e)` itself, one Python frame less
    per call than wrapping the executor (moe's host overhead 2.4 -> 2.1 us)."""

    run: Callable

    data: dict | None = None  # the program as data, when it came as data

    def __init__(self, source: str, executor: Executor, region_lines: dict | None = None):
        self.source = source
        self.fn = load_host(source)
        self.region_lines = region_lines or {}
        self.executor = executor

    @classmethod
    def from_data(cls, data: dict, executor: Executor, region_lines: dict | None = None,
                  regions=None, header: str = "") -> HostProgram:
        """The program `data` describes, printed by `hostcode.generate` (which checks it:
        ArtifactError naming the first bad field; `regions`, the subgraphs a call may
        name) and compiled."""
        source = generate(data, regions, header=header)
        try:
            program = cls(source, executor, region_lines)
        except (SyntaxError, RecursionError, MemoryError, ValueError) as e:
            raise ArtifactError(f"host program: cannot be compiled ({e})") from None
        program.data = data
        return program

    @property
    def executor(self) -> Executor:
        return self._executor

    @executor.setter
    def executor(self, executor: Executor) -> None:
        self._executor = executor
        caller = getattr(executor, "caller", None)
        self._call = caller(self._error) if caller is not None else self._wrapped
        self.run = functools.partial(self.fn, self._call)

    @contextlib.contextmanager
    def using(self, executor: Executor):
        """Run with another executor meanwhile (one that records or times each call, say);
        not while other threads call this program."""
        saved, self.executor = self.executor, executor
        try:
            yield self
        finally:
            self.executor = saved

    def run_path(self, *inputs) -> tuple:
        """Outputs, and the regions run, in order (those of a fused subgraph included,
        when its executor can tell them: `run_with_path`)."""
        path: list[str] = []
        traced = getattr(self.executor, "run_with_path", None)

        def R(name, *args):
            if traced is None:
                path.append(name)
                return self._call(name, *args)
            try:
                outs, ran = traced(name, *args)
            except Exception as e:
                raise self._error(name, e) from e
            path.extend(ran)
            return outs

        return self.fn(R, *inputs), tuple(path)

    def _wrapped(self, name: str, *args):
        try:
            return self._executor(name, *args)
        except Exception as e:
            raise self._error(name, e) from e

    def _error(self, name: str, e: Exception) -> RuntimeError:
        where = self.region_lines.get(name, "")
        return RuntimeError(f"while executing subgraph {name}"
                            f"{f' (from {where})' if where else ''}: {e}")


class RoutingExecutor:
    """Sends each region to the executor that compiled it (TVM with ONNX Runtime fallback)."""

    def __init__(self, routes: dict[str, Executor]):
        self.routes = dict(routes)

    def __call__(self, region: str, *args) -> tuple:
        return self.routes[region](region, *args)

    def run_with_path(self, region: str, *args) -> tuple[tuple, list[str]]:
        route = self.routes[region]
        if hasattr(route, "run_with_path"):
            return route.run_with_path(region, *args)
        return route(region, *args), [region]
