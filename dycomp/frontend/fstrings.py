"""f-strings over traced values (`self[f"expert_{idx[0]}"]`, `key = f"{int(n)}"`).

Python formats each `{value}` itself, so a traced 0-d tensor would be formatted as its
example value: a module chosen by name would be the example's on every call. The
converter rewrites every f-string into `fstring(parts)`; with a data-dependent part, the
host program builds the string at run time (`str` / `repr` / `format` of the value, then
`+`), and a `ModuleDict` indexed by it selects among its modules (`ops.getitem`).
"""

from __future__ import annotations

from dycomp.frontend.values import HVal, TVal, is_sym, tracer

_CONVERSIONS = {-1: None, ord("s"): str, ord("r"): repr, ord("a"): ascii}


def fstring(*parts) -> str | HVal:
    """`parts`: literal strings and `(value, conversion, spec)` triples, as the f-string's
    AST gives them (conversion: -1, or the code of 's', 'r', 'a')."""
    if not any(isinstance(p, tuple) and (is_sym(p[0]) or is_sym(p[2])) for p in parts):
        return "".join(p if isinstance(p, str) else _format(*p) for p in parts)
    out = None
    for p in parts:
        piece = p if isinstance(p, str) else _host_format(*p)
        out = piece if out is None else _concat(out, piece)
    return out


def fstring_builtin(f, args) -> HVal:
    """`format(v[, spec])`, `str(v)`, `repr(v)` of a data-dependent value (not of a static
    one: `ops` calls Python for those). `format` of a 0-d tensor formats its item, as
    PyTorch does; `str` / `repr` of a tensor print `tensor(...)` in PyTorch's style, which
    the host program does not reproduce."""
    t = tracer()
    if f is format:
        return _host_format(args[0], -1, args[1] if len(args) > 1 else "")
    if any(isinstance(a, TVal) for a in args):
        t.fail(f"{f.__name__}() of a tensor traced from the data (PyTorch prints `tensor(...)`)",
               "format a Python number: an f-string of a 0-d tensor, or str(int(t))")
    return t.host_op(f.__name__, tuple(args), f)


def _format(value, conversion, spec):
    conv = _CONVERSIONS[conversion]
    return format(value if conv is None else conv(value), spec)


def _host_format(value, conversion, spec):
    t = tracer()
    if is_sym(spec):
        t.fail("an f-string format spec that depends on the data")
    if isinstance(value, TVal):
        if value._ex.dim() != 0:
            t.fail("an f-string formatting a tensor of more than one element traced from the "
                   "data", "format `.item()` of a 0-d tensor, or an int")
        value = t.host_op("item", (value,), lambda a: a.item())
    elif not isinstance(value, HVal):
        return _format(value, conversion, spec)
    conv = _CONVERSIONS[conversion]
    if conv is ascii:
        t.fail("an f-string with !a on a data-dependent value", "use !r or !s")
    if conv is not None:
        value = t.host_op(conv.__name__, (value,), conv)
    return t.host_op("format", (value, spec), format)


def _concat(a, b):
    return tracer().host_op("add", (a, b), lambda x, y: x + y)
