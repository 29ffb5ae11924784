"""Comprehensions on the host: `(lambda a, b: [f(x) for x in a if x > b])(v1, v2)`.

A comprehension that branches on data runs on the host as the user wrote it; the
artifact stores its parameter names and source as strings. Before the runtime emits
it, `comprehension_source` parses the source and accepts only a small expression
language: comprehensions, arithmetic, comparisons, boolean logic, conditional
expressions, indexing, literals and containers, names bound by the lambda or the
comprehension, and calls of the operator table's builtins, `math.` / `np.` functions
and methods. No attribute other than a whitelisted method or function, no name or
attribute that starts with `_`. It returns the source re-printed from the checked tree
(`ast.unparse`), so what runs is what was checked.
"""

from __future__ import annotations

import ast

from dycomp.runtime.hostops import BUILTIN_CALLS, MATH_CALLS, METHODS, NUMPY_CALLS

_NODES = (ast.Expression, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
          ast.comprehension, ast.Name, ast.Constant, ast.BinOp, ast.UnaryOp, ast.BoolOp,
          ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.Dict,
          ast.Set, ast.Call, ast.Attribute, ast.Starred, ast.Load, ast.Store, ast.operator,
          ast.unaryop, ast.boolop, ast.cmpop)
_ATTRS = {"math": {n.split(".", 1)[1] for n in MATH_CALLS},
          "np": {n.split(".", 1)[1] for n in NUMPY_CALLS}}


class CompError(ValueError):
    """The comprehension's source is outside the accepted language; says why."""


def comprehension_source(params: list[str], source: str) -> str:
    """The checked source of `(lambda *params: source)`; raises CompError."""
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError) as e:
        raise CompError(f"not an expression ({e})") from None
    if not isinstance(tree.body, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        raise CompError("not a comprehension")
    bound = set(params) | {n.id for g in ast.walk(tree) if isinstance(g, ast.comprehension)
                           for n in ast.walk(g.target) if isinstance(n, ast.Name)}
    for node in ast.walk(tree):
        _check(node, bound)
    return ast.unparse(tree)


def _check(node: ast.AST, bound: set) -> None:
    if not isinstance(node, _NODES):
        raise CompError(f"{type(node).__name__} is not allowed")
    if isinstance(node, ast.Constant) and not isinstance(
            node.value, (int, float, complex, str, bool, type(None))):
        raise CompError(f"constant {node.value!r} is not allowed")
    if isinstance(node, ast.Name) and node.id not in bound and node.id not in BUILTIN_CALLS \
            and node.id not in _ATTRS:
        raise CompError(f"name {node.id!r} is not allowed")
    if isinstance(node, ast.Name) and node.id.startswith("_"):
        raise CompError(f"name {node.id!r} is not allowed")
    if isinstance(node, ast.Attribute):
        base = node.value.id if isinstance(node.value, ast.Name) else None
        ok = node.attr in _ATTRS[base] if base in _ATTRS and base not in bound else (
            node.attr in METHODS or node.attr in ("shape", "ndim", "size", "dtype", "T"))
        if not ok or node.attr.startswith("_"):
            raise CompError(f"attribute .{node.attr} is not allowed")
