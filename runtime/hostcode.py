"""The host program as data, and the one generator of the Python that runs it.

The compiler stores the host program in the manifest as JSON (`host_program`); the
runtime never executes code from an artifact: `generate` checks that data field by
field and prints the Python source itself, from the operator table
(`runtime/hostops.py`). The in-memory `CompiledModel` goes through the same `generate`
(`dycomp.ir.program.emit_python`). Anything it does not know raises `ArtifactError`
naming the field as a JSON path (`host.body[3].expr.args[1]`).

Program: `{"params": [name, ...], "body": [statement, ...]}`. Statements (`kind`):
`call` (region, args, outs), `op` (out or null, expr, pure), `assign` (dsts, srcs),
`if` (cond, then, orelse, source), `loop` (body, target and iter for a `for` loop, null
for `while True`, source), `break`, `continue`, `return` (value), `raise` (module,
qualname, args: literal values; rebuilt as data by `errors.model_error`); each may
carry `line` ("file.py:42", printed as a comment). Expressions: `{"var": name}`,
`{"lit": value}`, `{"op": operator, "args": [...]}`, `{"tuple"|"list": [...]}`,
`{"dict": [[key, expr], ...]}`. A literal value is a JSON scalar, or
`{"float": "nan"|"inf"|"-inf"}`, `{"tuple": [values]}`, `{"range": [start, stop,
step]}`, `{"complex": [re, im]}`. Variable names: a letter, then letters, digits and
`_` (128 at most), never a keyword or a name the generated code uses (`R`, `np`,
`math`, the builtins it calls).
"""

from __future__ import annotations

import keyword
import re

from dycomp.runtime.errors import ArtifactError
from dycomp.runtime.hostcomp import CompError, comprehension_source
from dycomp.runtime.hostops import GENERATOR_NAMES, OPS, render_op

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}\Z")
_REGION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_STMT_KEYS = {
    "call": {"region", "args", "outs"}, "op": {"out", "expr", "pure"},
    "assign": {"dsts", "srcs"}, "if": {"cond", "then", "orelse", "source"},
    "loop": {"body", "target", "iter", "source"}, "break": set(), "continue": set(),
    "return": {"value"}, "raise": {"module", "qualname", "args"},
}
_DEPTH = 64  # nesting of blocks or expressions (Python's own parser stops near 100)
_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


class _Fail(Exception):
    def __init__(self, path: str, what: str):
        super().__init__(f"{path}: {what}")


def generate(program, regions=None, name: str = "run", header: str = "") -> str:
    """Python source of `def run(R, *params)` for `program` (host-program data).
    `regions`: the subgraph names a `call` may name (None: any well-formed name).
    Raises ArtifactError naming the first field that is not valid."""
    try:
        return _Gen(regions).program(program, name, header)
    except _Fail as e:
        raise ArtifactError(f"host program: {e}") from None


class _Gen:
    def __init__(self, regions):
        self.regions = None if regions is None else set(regions)
        self.lines: list[str] = []
        self.depth = 0
        self.defined: set[str] = set()
        self.used: dict[str, str] = {}  # name -> the first field that reads it

    def program(self, p, name, header) -> str:
        _obj(p, "host", {"params", "body"})
        params = [self.name(v, f"host.params[{i}]") for i, v in enumerate(_list(p.get(
            "params"), "host.params"))]
        self.lines = [header] if header else []
        self.lines += ["import math", "", "import numpy as np", "", ""]
        self.lines.append(f"def {name}({', '.join(['R'] + params)}):")
        self.defined.update(params)
        self.block(p.get("body"), 1, "host.body")
        undefined = [(path, v) for v, path in self.used.items() if v not in self.defined]
        if undefined:
            raise _Fail(undefined[0][0], f"variable {undefined[0][1]!r} is never assigned")
        return "\n".join(self.lines) + "\n"

    def block(self, body, depth, path) -> None:
        body = _list(body, path)
        if depth > _DEPTH // 4:
            raise _Fail(path, "blocks nested too deeply")
        pad = "    " * depth
        if not body:
            self.lines.append(pad + "pass")
        for i, s in enumerate(body):
            self.stmt(s, depth, pad, f"{path}[{i}]")

    def stmt(self, s, depth, pad, path) -> None:  # noqa: C901 - one case per statement kind
        if not isinstance(s, dict) or not isinstance(s.get("kind"), str) or \
                s["kind"] not in _STMT_KEYS:
            raise _Fail(f"{path}.kind", f"unknown statement {_short(s)}")
        kind = s["kind"]
        _obj(s, path, _STMT_KEYS[kind] | {"kind", "line"})
        line = _text(s.get("line"), f"{path}.line")
        tail = f"  # {line}" if line else ""
        if kind == "call":
            region = s.get("region")
            if not isinstance(region, str) or not _REGION.match(region) or (
                    self.regions is not None and region not in self.regions):
                raise _Fail(f"{path}.region", f"no subgraph {_short(region)}")
            outs = self.names(s.get("outs"), f"{path}.outs", define=True)
            args = self.names(s.get("args"), f"{path}.args", use=True)
            lhs = f"{outs[0]}, = " if len(outs) == 1 else (f"{', '.join(outs)} = " if outs
                                                            else "")
            self.lines.append(f"{pad}{lhs}R({', '.join([repr(region)] + args)}){tail}")
        elif kind == "op":
            out = s.get("out")
            lhs = "" if out is None else self.name(out, f"{path}.out", define=True) + " = "
            _bool(s.get("pure", True), f"{path}.pure")
            expr = self.expr(s.get("expr"), f"{path}.expr", effect=out is None)
            self.lines.append(f"{pad}{lhs}{expr}{tail}")
        elif kind == "assign":
            dsts = self.names(s.get("dsts"), f"{path}.dsts", define=True)
            srcs = [self.expr(x, f"{path}.srcs[{i}]")
                    for i, x in enumerate(_list(s.get("srcs"), f"{path}.srcs"))]
            if len(srcs) != len(dsts):
                raise _Fail(f"{path}.srcs", f"{len(srcs)} values for {len(dsts)} names")
            if dsts:
                self.lines.append(f"{pad}{', '.join(dsts)} = {', '.join(srcs)}{tail}")
        elif kind == "if":
            self.comment(s, pad, path, line)
            self.lines.append(f"{pad}if {self.name(s.get('cond'), f'{path}.cond', use=True)}:")
            self.block(s.get("then"), depth + 1, f"{path}.then")
            if _list(s.get("orelse", []), f"{path}.orelse"):
                self.lines.append(f"{pad}else:")
                self.block(s.get("orelse"), depth + 1, f"{path}.orelse")
        elif kind == "loop":
            self.comment(s, pad, path, line)
            if s.get("iter") is None:
                self.lines.append(f"{pad}while True:")
            else:
                target = self.name(s.get("target"), f"{path}.target", define=True)
                it = self.expr(s.get("iter"), f"{path}.iter")
                self.lines.append(f"{pad}for {target} in {it}:")
            self.block(s.get("body"), depth + 1, f"{path}.body")
        elif kind in ("break", "continue"):
            self.lines.append(f"{pad}{kind}")
        elif kind == "return":
            self.lines.append(f"{pad}return {self.expr(s.get('value'), f'{path}.value')}{tail}")
        else:  # raise: the class by name, rebuilt by errors.model_error as data
            module = _text(s.get("module"), f"{path}.module", required=True)
            qualname = _text(s.get("qualname"), f"{path}.qualname", required=True)
            args = tuple(_literal_value(a, f"{path}.args[{i}]")
                         for i, a in enumerate(_list(s.get("args", []), f"{path}.args")))
            self.lines.append(f"{pad}raise _dyc_error({module!r}, {qualname!r}, "
                              f"{_render_literal(args)}){tail}")

    def comment(self, s, pad, path, line) -> None:
        source = _text(s.get("source", ""), f"{path}.source")
        if source:
            self.lines.append(f"{pad}# {line}: {source}")

    def names(self, vs, path, **how) -> list[str]:
        return [self.name(v, f"{path}[{i}]", **how) for i, v in enumerate(_list(vs, path))]

    def name(self, v, path, define=False, use=False) -> str:
        """A variable name, checked; `define`: the statement assigns it, `use`: reads it."""
        if not isinstance(v, str) or not _NAME.match(v) or keyword.iskeyword(v) or \
                v in GENERATOR_NAMES:
            raise _Fail(path, f"{_short(v)} is not an allowed variable name")
        if define:
            self.defined.add(v)
        if use:
            self.used.setdefault(v, path)
        return v

    def expr(self, e, path, effect=False) -> str:
        self.depth += 1
        try:
            return self._expr(e, path, effect)
        finally:
            self.depth -= 1

    def _expr(self, e, path, effect) -> str:
        if self.depth > _DEPTH:
            raise _Fail(path, "expression nested too deeply")
        if not isinstance(e, dict) or len(e) not in (1, 2):
            raise _Fail(path, f"not an expression: {_short(e)}")
        if "var" in e and len(e) == 1:
            return self.name(e["var"], f"{path}.var", use=True)
        if "lit" in e and len(e) == 1:
            return _render_literal(_literal_value(e["lit"], f"{path}.lit"))
        if "op" in e:
            _obj(e, path, {"op", "args"})
            return self.op(e["op"], _list(e.get("args", []), f"{path}.args"), path, effect)
        key = next(iter(e))
        if len(e) != 1 or key not in ("tuple", "list", "dict"):
            raise _Fail(path, f"unknown expression {_short(e)}")
        items = _list(e[key], f"{path}.{key}")
        if key == "dict":
            return "{" + ", ".join(self.entry(kv, f"{path}.dict[{i}]")
                                   for i, kv in enumerate(items)) + "}"
        inner = ", ".join(self.expr(x, f"{path}.{key}[{i}]") for i, x in enumerate(items))
        if key == "list":
            return f"[{inner}]"
        return f"({inner},)" if len(items) == 1 else f"({inner})"

    def entry(self, kv, path) -> str:
        if not isinstance(kv, list) or len(kv) != 2:
            raise _Fail(path, "a dict entry is [key, expression]")
        key = _literal_value(kv[0], f"{path}[0]", scalar=True)
        return f"{key!r}: {self.expr(kv[1], f'{path}[1]')}"

    def op(self, name, args, path, effect) -> str:
        spec = OPS.get(name) if isinstance(name, str) else None
        if spec is None:
            raise _Fail(f"{path}.op", f"unknown operator {_short(name)}")
        if not spec.min_args <= len(args) <= spec.max_args:
            raise _Fail(f"{path}.args", f"{name} takes {spec.min_args}..{spec.max_args} "
                                        f"arguments, not {len(args)}")
        if spec.kind == "effect" and not effect:
            raise _Fail(f"{path}.op", f"{name} is a statement, not a value")
        if spec.kind == "comprehension":
            return self.comprehension(args, path)
        return render_op(name, [self.expr(a, f"{path}.args[{i}]") for i, a in enumerate(args)])

    def comprehension(self, args, path) -> str:
        params = _literal_value(args[0].get("lit") if isinstance(args[0], dict) else None,
                                f"{path}.args[0].lit")
        if not isinstance(params, tuple) or len(params) != len(args) - 2:
            raise _Fail(f"{path}.args[0]", "a tuple of one name per value")
        params = [self.name(p, f"{path}.args[0].lit.tuple[{i}]") for i, p in enumerate(params)]
        source = args[1].get("lit") if isinstance(args[1], dict) else None
        if not isinstance(source, str):
            raise _Fail(f"{path}.args[1]", "the comprehension's source string")
        try:
            source = comprehension_source(params, source)
        except CompError as e:
            raise _Fail(f"{path}.args[1]", f"comprehension not accepted: {e}") from None
        values = [self.expr(a, f"{path}.args[{i + 2}]") for i, a in enumerate(args[2:])]
        return f"(lambda {', '.join(params)}: {source})({', '.join(values)})"


def _obj(d, path: str, keys: set) -> None:
    if not isinstance(d, dict):
        raise _Fail(path, f"expected an object, got {_short(d)}")
    extra = sorted(set(d) - keys, key=str)
    if extra:
        raise _Fail(f"{path}.{extra[0]}", "unknown field")


def _list(v, path: str) -> list:
    if not isinstance(v, list):
        raise _Fail(path, f"expected a list, got {_short(v)}")
    return v


def _bool(v, path: str) -> bool:
    if not isinstance(v, bool):
        raise _Fail(path, f"expected true or false, got {_short(v)}")
    return v


def _text(v, path: str, required: bool = False) -> str:
    """A string printed into the source (a comment, a repr): one printable line."""
    if v is None and not required:
        return ""
    if not isinstance(v, str) or not v.isprintable() or len(v) > 65536 or (required and not v):
        raise _Fail(path, f"expected one printable line of text, got {_short(v)}")
    return v


def _literal_value(v, path: str, scalar: bool = False, depth: int = 0):
    """The Python value a literal's data stands for."""
    if depth > _DEPTH:
        raise _Fail(path, "literal nested too deeply")
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise _Fail(path, "non-finite floats are written {\"float\": \"nan\"}")
        return v
    if not scalar and isinstance(v, dict) and len(v) == 1:
        (key, x), = v.items()
        if key == "float" and isinstance(x, str) and x in _NONFINITE:
            return _NONFINITE[x]
        if key == "tuple" and isinstance(x, list):
            return tuple(_literal_value(a, f"{path}.tuple[{i}]", depth=depth + 1)
                         for i, a in enumerate(x))
        if key == "range" and isinstance(x, list) and len(x) == 3 and all(
                type(a) is int for a in x) and x[2] != 0:
            return range(*x)
        if key == "complex" and isinstance(x, list) and len(x) == 2 and all(
                type(a) in (int, float) for a in x):
            return complex(*x)
    raise _Fail(path, f"not a literal: {_short(v)}")


def _render_literal(v) -> str:
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return f"float({str(v)!r})"
    if isinstance(v, tuple):
        inner = ", ".join(_render_literal(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, complex) and not all(map(_finite, (v.real, v.imag))):
        return f"complex({_render_literal(v.real)}, {_render_literal(v.imag)})"
    return repr(v)


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
