"""The host program: structured statements that call regions and take decisions.

Values on the host are named variables (`Var`). Expressions are small trees of
variables, Python literals, containers and operations (`Op`) of the fixed host operator
table (`runtime/hostops.py`), so passes can rename variables and match operators by
name. `program_data` turns a program into JSON data (what an artifact stores) and the
runtime's generator prints readable Python from it (`runtime/hostcode.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dycomp.runtime.hostcode import generate
from dycomp.runtime.hostops import OPS, op_format


@dataclass(frozen=True)
class Var:
    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Op:
    """Operator `name` of the host operator table (`runtime/hostops.py`) applied to
    `args`, e.g. `Op("bool", (v,))`, printed `bool(v)`."""

    name: str
    args: tuple = ()

    def __post_init__(self):
        if self.name not in OPS:
            raise KeyError(f"{self.name!r} is not a host operator (runtime/hostops.py)")

    @property
    def fmt(self) -> str:
        """Its `str.format` pattern over the rendered arguments (`({0} + {1})`)."""
        return op_format(self.name, len(self.args))


@dataclass(frozen=True)
class Lit:
    """A Python literal (int, float, bool, str, None, or a repr-able tuple of those)."""

    value: Any


def float32_bound(op: str, value, float64: bool = False) -> float | None:
    """The float32 `b` for which `x op b` is `float(x) op value` for every float32 `x`
    (NaN and infinities included), `op` one of `<`, `<=`, `>`, `>=`: `value` rounded
    down for `>` and `<=`, up for `<` and `>=`; with `float64`, for a float64 `x`, `value`
    itself. None where no such number decides as Python does: another op, a `value` that
    is not an int or float (bools included), an int a double cannot hold, NaN (float32).
    This lets a Python-float comparison of a value read from a tensor run on the tensor."""
    if op not in ("<", "<=", ">", ">=") or type(value) not in (int, float) or (
            type(value) is int and abs(value) > 2**53):  # Python compares such an int exactly
        return None
    value = float(value)
    if float64:
        return value
    if math.isnan(value):
        return None
    with np.errstate(over="ignore"):
        b = np.float32(value)
    if float(b) > value and op in (">", "<="):
        b = np.nextafter(b, np.float32(-np.inf))
    elif float(b) < value and op in ("<", ">="):
        b = np.nextafter(b, np.float32(np.inf))
    return float(b)


def expr_vars(e) -> list[Var]:
    """Variables used by an expression, in order."""
    if isinstance(e, Var):
        return [e]
    if isinstance(e, Op):
        return [v for a in e.args for v in expr_vars(a)]
    if isinstance(e, (tuple, list)):
        return [v for a in e for v in expr_vars(a)]
    if isinstance(e, dict):
        return [v for a in e.values() for v in expr_vars(a)]
    return []


def rename_expr(e, m: dict):
    if isinstance(e, Var):
        return m.get(e, e)
    if isinstance(e, Op):
        return Op(e.name, tuple(rename_expr(a, m) for a in e.args))
    if isinstance(e, tuple):
        return tuple(rename_expr(a, m) for a in e)
    if isinstance(e, list):
        return [rename_expr(a, m) for a in e]
    if isinstance(e, dict):
        return {k: rename_expr(a, m) for k, a in e.items()}
    return e


def render(e) -> str:
    """Python source for an expression (the runtime's generator prints it)."""
    return generate({"params": [], "body": [{"kind": "return", "value": expr_data(e)}]}
                    ).splitlines()[-1].strip()[len("return "):]


@dataclass
class Stmt:
    line: str | None = field(default=None, kw_only=True)  # "file.py:42" of the source

    def uses(self) -> list[Var]:
        return []

    def defs(self) -> list[Var]:
        return []

    def blocks(self) -> list[list[Stmt]]:
        return []


@dataclass
class CallRegion(Stmt):
    region: str
    args: list  # list of Var
    outs: list  # list of Var

    def uses(self):
        return list(self.args)

    def defs(self):
        return list(self.outs)


@dataclass
class HostOp(Stmt):
    out: Var | None
    expr: Any
    pure: bool = True  # False for statements with side effects (list.append)

    def uses(self):
        return expr_vars(self.expr)

    def defs(self):
        return [self.out] if self.out is not None else []


@dataclass
class Assign(Stmt):
    """Parallel move `d0, d1 = s0, s1` (phi resolution at joins and loop back-edges)."""

    dsts: list
    srcs: list

    def uses(self):
        return expr_vars(self.srcs)

    def defs(self):
        return list(self.dsts)


# The source of a switch's cases (`frontend.ops.switch`): "options[index], case 2", which
# no condition a user writes can read as.
SWITCH_CASE = "options[index], case "


@dataclass
class If(Stmt):
    cond: Var
    then: list = field(default_factory=list)
    orelse: list = field(default_factory=list)
    source: str = ""

    @property
    def switch_case(self) -> bool:
        """A case of `options[index]` (`frontend.ops.switch`): `if index == k:`, where
        `index` out of range goes to the last option."""
        return self.source.startswith(SWITCH_CASE)

    def uses(self):
        return [self.cond]

    def blocks(self):
        return [self.then, self.orelse]


@dataclass
class Loop(Stmt):
    """`while True:` (iter_expr None) or `for target in iter_expr:`; exits through Break."""

    body: list = field(default_factory=list)
    target: Var | None = None
    iter_expr: Any = None
    source: str = ""

    def uses(self):
        return expr_vars(self.iter_expr)

    def defs(self):
        return [self.target] if self.target is not None else []

    def blocks(self):
        return [self.body]


@dataclass
class Break(Stmt):
    pass


@dataclass
class Continue(Stmt):
    pass


@dataclass
class Return(Stmt):
    value: Any

    def uses(self):
        return expr_vars(self.value)


@dataclass
class Raise(Return):
    """`raise E(*args)` on the host: the exception's class by module and qualified name
    and its static arguments; the runtime rebuilds it (`runtime.errors.model_error`).
    A `Return` for control flow: no statement after it runs."""

    module: str = "builtins"
    qualname: str = "Exception"
    args: tuple = ()

    def uses(self):
        return []


def walk(body: list[Stmt]):
    """Every statement, depth first, in program order."""
    for s in body:
        yield s
        for b in s.blocks():
            yield from walk(b)


def emit_python(body: list[Stmt], params: list[Var], name: str = "run", header: str = "") -> str:
    """The host program as Python source: `def run(R, params...)`, R calls a region.
    Printed by the runtime's generator from `program_data`: the one code path from a
    host program to the Python that runs, in memory and from an artifact."""
    return generate(program_data(body, params), name=name, header=header)


def program_data(body: list[Stmt], params: list[Var]) -> dict:
    """The host program as JSON data (the schema: `runtime/hostcode.py`)."""
    return {"params": [p.name for p in params], "body": _body_data(body)}


def _body_data(body: list[Stmt]) -> list:
    return [_stmt_data(s) for s in body]


def _stmt_data(s: Stmt) -> dict:  # noqa: C901 - one case per statement kind
    d: dict = {}
    if isinstance(s, CallRegion):
        d = {"kind": "call", "region": s.region, "args": [v.name for v in s.args],
             "outs": [v.name for v in s.outs]}
    elif isinstance(s, HostOp):
        d = {"kind": "op", "out": s.out.name if s.out is not None else None,
             "expr": expr_data(s.expr), "pure": s.pure}
    elif isinstance(s, Assign):
        d = {"kind": "assign", "dsts": [v.name for v in s.dsts],
             "srcs": [expr_data(x) for x in s.srcs]}
    elif isinstance(s, If):
        d = {"kind": "if", "cond": s.cond.name, "then": _body_data(s.then),
             "orelse": _body_data(s.orelse), "source": s.source}
    elif isinstance(s, Loop):
        d = {"kind": "loop", "body": _body_data(s.body), "source": s.source,
             "target": s.target.name if s.target is not None else None,
             "iter": expr_data(s.iter_expr) if s.iter_expr is not None else None}
    elif isinstance(s, (Break, Continue)):
        d = {"kind": type(s).__name__.lower()}
    elif isinstance(s, Raise):
        d = {"kind": "raise", "module": s.module, "qualname": s.qualname,
             "args": [_literal_data(a) for a in s.args]}
    elif isinstance(s, Return):
        d = {"kind": "return", "value": expr_data(s.value)}
    else:  # pragma: no cover - every Stmt subclass is handled above
        raise TypeError(f"unknown statement {s!r}")
    if s.line:
        d["line"] = s.line
    return d


def expr_data(e) -> dict:
    """An expression as JSON data: var, lit, op, tuple, list or dict."""
    if isinstance(e, Var):
        return {"var": e.name}
    if isinstance(e, Lit):
        return {"lit": _literal_data(e.value)}
    if isinstance(e, Op):
        return {"op": e.name, "args": [expr_data(a) for a in e.args]}
    if isinstance(e, tuple):
        return {"tuple": [expr_data(a) for a in e]}
    if isinstance(e, list):
        return {"list": [expr_data(a) for a in e]}
    if isinstance(e, dict):
        return {"dict": [[_literal_data(k), expr_data(a)] for k, a in e.items()]}
    return {"lit": _literal_data(e)}


def _literal_data(v):
    """A literal value as JSON: scalars as they are, non-finite floats, tuples, ranges
    and complex numbers tagged."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": str(v)}
    if isinstance(v, tuple):
        return {"tuple": [_literal_data(x) for x in v]}
    if isinstance(v, range):
        return {"range": [v.start, v.stop, v.step]}
    if isinstance(v, complex):
        return {"complex": [v.real, v.imag]}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"{v!r} cannot be a host-program literal")
