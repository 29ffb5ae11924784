"""The host program: structured statements that call regions and take decisions.

Values on the host are named variables (`Var`). Expressions are small trees of
variables, Python literals, containers and formatted operations, so passes can
rename variables and the emitter can print readable Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Var:
    name: str

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Op:
    """An operation printed as `fmt.format(*rendered args)`, e.g. `bool({0})`."""

    fmt: str
    args: tuple = ()


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
        return Op(e.fmt, tuple(rename_expr(a, m) for a in e.args))
    if isinstance(e, tuple):
        return tuple(rename_expr(a, m) for a in e)
    if isinstance(e, list):
        return [rename_expr(a, m) for a in e]
    if isinstance(e, dict):
        return {k: rename_expr(a, m) for k, a in e.items()}
    return e


def render(e) -> str:
    """Python source for an expression."""
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Lit):
        return _literal(e.value)
    if isinstance(e, Op):
        return e.fmt.format(*(render(a) for a in e.args))
    if isinstance(e, tuple):
        inner = ", ".join(render(a) for a in e)
        return f"({inner},)" if len(e) == 1 else f"({inner})"
    if isinstance(e, list):
        return "[" + ", ".join(render(a) for a in e) + "]"
    if isinstance(e, dict):
        return "{" + ", ".join(f"{k!r}: {render(a)}" for k, a in e.items()) + "}"
    return _literal(e)


def _literal(v) -> str:
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return f"float({str(v)!r})"
    return repr(v)


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
    """The host program as Python source: `def run(R, params...)`, R calls a region."""
    lines = [header] if header else []
    lines += ["import math", "", "import numpy as np", "", ""]
    sig = ", ".join(["R"] + [p.name for p in params])
    lines.append(f"def {name}({sig}):")
    _emit_block(body, 1, lines)
    return "\n".join(lines) + "\n"


def _emit_block(body, depth, lines):
    pad = "    " * depth
    if not body:
        lines.append(pad + "pass")
    for s in body:
        _emit_stmt(s, depth, pad, lines)


def _emit_stmt(s, depth, pad, lines):
    tail = f"  # {s.line}" if s.line else ""
    if isinstance(s, CallRegion):
        outs = ", ".join(v.name for v in s.outs)
        args = ", ".join([repr(s.region)] + [v.name for v in s.args])
        lhs = f"{outs}, = " if len(s.outs) == 1 else (f"{outs} = " if s.outs else "")
        lines.append(f"{pad}{lhs}R({args}){tail}")
    elif isinstance(s, HostOp):
        lhs = f"{s.out.name} = " if s.out is not None else ""
        lines.append(f"{pad}{lhs}{render(s.expr)}{tail}")
    elif isinstance(s, Assign):
        if s.dsts:
            d = ", ".join(v.name for v in s.dsts)
            lines.append(f"{pad}{d} = {', '.join(render(x) for x in s.srcs)}{tail}")
    elif isinstance(s, If):
        if s.source:
            lines.append(f"{pad}# {s.line}: {s.source}")
        lines.append(f"{pad}if {s.cond.name}:")
        _emit_block(s.then, depth + 1, lines)
        if s.orelse:
            lines.append(f"{pad}else:")
            _emit_block(s.orelse, depth + 1, lines)
    elif isinstance(s, Loop):
        if s.source:
            lines.append(f"{pad}# {s.line}: {s.source}")
        if s.iter_expr is None:
            lines.append(f"{pad}while True:")
        else:
            lines.append(f"{pad}for {s.target.name} in {render(s.iter_expr)}:")
        _emit_block(s.body, depth + 1, lines)
    elif isinstance(s, Break):
        lines.append(f"{pad}break")
    elif isinstance(s, Continue):
        lines.append(f"{pad}continue")
    elif isinstance(s, Raise):
        lines.append(f"{pad}raise _dyc_error({s.module!r}, {s.qualname!r}, {s.args!r}){tail}")
    elif isinstance(s, Return):
        lines.append(f"{pad}return {render(s.value)}{tail}")
    else:  # pragma: no cover - every Stmt subclass is handled above
        raise TypeError(f"unknown statement {s!r}")
