"""Path-split batching: run a host program over a group of samples, splitting the group at
every decision by each sample's own outcome (numpy only, never torch).

The host program is data (`runtime/hostcode.py`, checked when the artifact was loaded);
this interpreter walks it with one environment per sample. A statement runs for the
samples still active in its block; `if` partitions them by their own condition, a loop
runs each sample for its own number of iterations, `break` / `continue` / `return` /
`raise` take a sample out of the block. Expressions are the generator's own Python for
that expression (`hostcode._Gen.expr`), compiled once and evaluated per sample. So every
sample computes exactly what the batch-1 program computes: the answers equal
one-request-at-a-time answers by construction.

Region calls go through one seam, `call_group(program, region, rows, paths)`, which gets
every sample of the group at once. `call_each` calls the region once per sample (regions
compiled at batch 1: today's artifacts). `call_rows` is the batched form: the rows of the
samples whose other arguments agree concatenated, one call, the outputs split by rows;
`run_batch` uses it (`group_caller`) for the subgraphs whose manifest
`batching.subgraphs` entry says `batched: true`, when the artifact's inputs have a
dynamic dim 0, and `CALL_GROUP` (default `call_each`) for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dycomp.runtime.errors import model_error
from dycomp.runtime.host_index import slice_start
from dycomp.runtime.hostcode import _Gen

_GLOBALS = {"np": np, "math": math, "slice_start": slice_start, "_dyc_error": model_error,
            "__builtins__": __builtins__}


class _Sample:
    """One request's state: its variables, the regions it ran, how it left its block."""

    __slots__ = ("index", "env", "path", "exit", "value")

    def __init__(self, index: int, env: dict):
        self.index, self.env, self.path = index, env, []
        self.exit: str | None = None  # "break", "continue", "return" or "error"
        self.value = None  # the return value, or the exception

    def fail(self, e: BaseException) -> None:
        self.exit, self.value = "error", e


def call_each(program, region: str, rows: list[tuple], paths: bool) -> list:
    """The seam's batch-1 form: one call per sample. Per sample, `(outputs, ran)` or
    the exception the one-at-a-time call raises."""
    traced = getattr(program.executor, "run_with_path", None) if paths else None
    out = []
    for args in rows:
        try:
            if traced is None:
                out.append((program._call(region, *args), [region]))
            else:
                try:
                    outs, ran = traced(region, *args)
                except Exception as e:
                    raise program._error(region, e) from e
                out.append((outs, list(ran)))
        except Exception as e:  # the sample's own failure, as art.run would raise it
            out.append(e)
    return out


CALL_GROUP: Callable = call_each


def call_rows(program, region: str, rows: list[tuple], paths: bool) -> list:
    """The seam's batched form, for a region compiled with a dynamic dim 0 that is
    row-wise (manifest `batching.subgraphs[region].batched`): the samples whose
    non-array arguments (and array trailing shapes) agree are concatenated along dim 0
    and run in one call, its outputs split back by rows. A bucket of one sample, an
    output that is not split by rows, or a failing call falls back to `call_each`, so
    each sample still gets its own answer or its own error."""
    buckets: dict = {}
    for i, args in enumerate(rows):
        buckets.setdefault(_bucket_key(args), []).append(i)
    out: list = [None] * len(rows)
    for members in buckets.values():
        group = [rows[i] for i in members]
        answers = _one_call(program, region, group, paths) if len(members) > 1 else None
        if answers is None:
            answers = call_each(program, region, group, paths)
        for i, a in zip(members, answers):
            out[i] = a
    return out


def _bucket_key(args: tuple):
    return tuple(("rows", a.dtype.str, a.shape[1:]) if isinstance(a, np.ndarray) and a.ndim
                 else ("value", type(a).__name__, repr(a)) for a in args)


def _one_call(program, region: str, group: list[tuple], paths: bool) -> list | None:
    sizes = [next((a.shape[0] for a in args if isinstance(a, np.ndarray) and a.ndim), 0)
             for args in group]
    if not all(sizes):
        return None
    joined = tuple(np.concatenate([args[k] for args in group]) if isinstance(a, np.ndarray)
                   and a.ndim else a for k, a in enumerate(group[0]))
    answer = call_each(program, region, [joined], paths)[0]
    if isinstance(answer, BaseException):
        return None
    values, ran = answer
    cuts = np.cumsum(sizes)[:-1]
    if not all(isinstance(v, np.ndarray) and v.ndim and v.shape[0] == sum(sizes)
               for v in values):
        return None
    split = [np.split(v, cuts) for v in values]
    return [(tuple(col[j] for col in split), list(ran)) for j in range(len(group))]


def group_caller(batched: set[str], fallback: Callable | None = None,
                 variants: dict | None = None, stats: dict | None = None) -> Callable:
    """A seam that calls the regions in `batched` with `call_rows`, those with a rows
    variant (`variants`, `runtime/batch_rows.py`) with `call_variant`, and the others
    with `fallback` (default: `CALL_GROUP` at call time). `stats` counts the calls of
    the variants: batched_calls, batched_samples, single_calls."""
    from dycomp.runtime.batch_rows import call_variant, count_calls

    variants = variants or {}

    def call(program, region, rows, paths):
        if region in batched:
            return call_rows(program, region, rows, paths)
        if region in variants:
            return call_variant(variants[region], program, region, rows, paths, stats)
        count_calls(stats, False, len(rows))
        return (fallback or CALL_GROUP)(program, region, rows, paths)
    return call


class SplitRunner:
    """Runs the host program `data` of `program` over many samples at once."""

    def __init__(self, program, data: dict, call_group: Callable | None = None,
                 code: dict | None = None):
        self.program, self.data, self.call_group = program, data, call_group
        self.gen = _Gen(None)
        # expression id -> compiled code; `code` shares it between runs over the same
        # `data` (which must outlive it: ids are the expressions' own)
        self.code: dict[int, object] = {} if code is None else code

    def run(self, inputs: list[tuple], paths: bool) -> list[_Sample]:
        params = self.data["params"]
        group = [_Sample(i, dict(zip(params, args))) for i, args in enumerate(inputs)]
        self.paths = paths
        self.block(self.data["body"], group)
        for s in group:
            if s.exit is None:  # fell off the end: Python returns None
                s.exit = "return"
        return group

    def eval(self, e, sample: _Sample, effect: bool = False):
        code = self.code.get(id(e))
        if code is None:
            src = self.gen.expr(e, "expr", effect=effect)
            code = self.code[id(e)] = compile(src, "<dycomp batch>", "eval")
        return eval(code, _GLOBALS, sample.env)  # noqa: S307 - the generator's own Python

    def block(self, body: list, group: list[_Sample]) -> None:
        active = group
        for s in body:
            if not active:
                return
            getattr(self, "s_" + s["kind"])(s, active)
            active = [x for x in active if x.exit is None]

    def each(self, group, fn) -> None:
        for x in group:
            try:
                fn(x)
            except Exception as e:
                x.fail(e)

    def s_call(self, s, group) -> None:
        rows = [tuple(x.env[a] for a in s["args"]) for x in group]
        outs = s["outs"]
        call = self.call_group or CALL_GROUP
        for x, res in zip(group, call(self.program, s["region"], rows, self.paths)):
            if isinstance(res, BaseException):
                x.fail(res)
                continue
            values, ran = res
            x.path.extend(ran)
            if outs:
                try:
                    values = tuple(values)
                    if len(values) != len(outs):
                        raise ValueError(f"{s['region']} returned {len(values)} values for "
                                         f"{len(outs)} names")
                    x.env.update(zip(outs, values))
                except Exception as e:
                    x.fail(e)

    def s_op(self, s, group) -> None:
        out = s.get("out")

        def one(x):
            v = self.eval(s["expr"], x, effect=out is None)
            if out is not None:
                x.env[out] = v
        self.each(group, one)

    def s_assign(self, s, group) -> None:
        def one(x):
            values = [self.eval(e, x) for e in s["srcs"]]
            x.env.update(zip(s["dsts"], values))
        self.each(group, one)

    def s_if(self, s, group) -> None:
        taken: dict[bool, list] = {True: [], False: []}

        def one(x):
            taken[bool(x.env[s["cond"]])].append(x)
        self.each(group, one)
        self.block(s["then"], taken[True])
        self.block(s.get("orelse", []), taken[False])

    def s_loop(self, s, group) -> None:
        iters: dict[int, object] = {}
        if s.get("iter") is not None:
            def start(x):
                iters[x.index] = iter(self.eval(s["iter"], x))
            self.each(group, start)
        active = [x for x in group if x.exit is None]
        while active:
            if iters:
                active = [x for x in active if self._next(x, iters, s.get("target"))]
            self.block(s["body"], active)
            going = []
            for x in active:
                if x.exit in ("break", "continue"):
                    x.exit, stay = None, x.exit == "continue"
                    if stay:
                        going.append(x)
                elif x.exit is None:
                    going.append(x)
            active = going

    def _next(self, x: _Sample, iters: dict, target) -> bool:
        try:
            value = next(iters[x.index])
        except StopIteration:
            return False
        except Exception as e:
            x.fail(e)
            return False
        x.env[target] = value
        return True

    def s_break(self, s, group) -> None:
        for x in group:
            x.exit = "break"

    def s_continue(self, s, group) -> None:
        for x in group:
            x.exit = "continue"

    def s_return(self, s, group) -> None:
        def one(x):
            x.value = self.eval(s["value"], x)
            x.exit = "return"
        self.each(group, one)

    def s_raise(self, s, group) -> None:
        from dycomp.runtime.hostcode import _literal_value

        args = tuple(_literal_value(a, "raise") for a in s.get("args", []))
        for x in group:
            x.fail(model_error(s["module"], s["qualname"], args))
