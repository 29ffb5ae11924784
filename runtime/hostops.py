"""The host program's operator set: every operation a host statement may compute.

A host expression names one operator of this fixed table and gives its arguments
(variables, literals, containers, other operations); constants are arguments, never
part of the operator. The compiler emits only these, the ONNX lowering recognises them
by name, and the runtime generates the Python it runs from them (`runtime/hostcode.py`),
so an artifact can name an operation but never supply code. numpy only, no torch.

`OPS[name] = OpSpec(template, min arity, max arity, kind)`:

- a `template` is a `str.format` pattern over the rendered arguments (`({0} + {1})`);
  None for the variadic kinds, rendered by `render_op`: `call` (`name(a, b)`: a
  whitelisted builtin, `math.` or `np.` function), `method` (`.name` operators:
  `a.name(b, c)`, a whitelisted method), `none_of` (`(not (a or b))`) and `range`;
- kinds: `arith`, `compare`, `logic`, `convert`, `read` (tensor to Python value),
  `index`, `build` (containers), `effect` (a statement of its own, changes its first
  argument: `a[k] = v`), `call`, `method`, `comprehension` (`runtime/hostcomp.py`).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class OpSpec(NamedTuple):
    template: str | None
    min_args: int
    max_args: int
    kind: str


_BINARY = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%",
           "pow": "**", "bitand": "&", "bitor": "|", "bitxor": "^"}
_COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=", "is": "is",
            "is_not": "is not", "in": "in", "not_in": "not in"}
# `a op b` -> the symbol, for the comparisons and the arithmetic
SYMBOLS = {**_BINARY, **_COMPARE}

OPS: dict[str, OpSpec] = {
    **{n: OpSpec("({0} %s {1})" % s, 2, 2, "arith") for n, s in _BINARY.items()},
    **{n: OpSpec("({0} %s {1})" % s, 2, 2, "compare") for n, s in _COMPARE.items()},
    "neg": OpSpec("(-{0})", 1, 1, "arith"),
    "abs": OpSpec("abs({0})", 1, 1, "arith"),
    "not": OpSpec("(not {0})", 1, 1, "logic"),
    "none_of": OpSpec(None, 1, 64, "logic"),  # (not (a or b or ...)): no path left early
    "bool": OpSpec("bool({0})", 1, 1, "convert"),
    "int": OpSpec("int({0})", 1, 1, "convert"),
    "float": OpSpec("float({0})", 1, 1, "convert"),
    "item": OpSpec("{0}.item()", 1, 1, "read"),
    "int_item": OpSpec("int({0}.item())", 1, 1, "read"),
    "float_item": OpSpec("float({0}.item())", 1, 1, "read"),
    "tolist": OpSpec("{0}.tolist()", 1, 1, "read"),
    "numel": OpSpec("{0}.size", 1, 1, "read"),
    "shape": OpSpec("{0}.shape[{1}]", 2, 2, "read"),  # a dimension that varies
    "asarray": OpSpec("np.asarray({0}, dtype={1})", 2, 2, "read"),  # a host scalar -> tensor
    "len": OpSpec("len({0})", 1, 1, "index"),
    "nonempty": OpSpec("(len({0}) > 0)", 1, 1, "index"),
    "getitem": OpSpec("{0}[{1}]", 2, 2, "index"),
    "tail": OpSpec("{0}[{1}:]", 2, 2, "index"),
    "range": OpSpec(None, 1, 3, "index"),
    "range_index": OpSpec("range({0})[{1}]", 2, 2, "index"),
    "slice_start": OpSpec("slice_start({0}, {1}, {2}, {3}, {4})", 5, 5, "index"),
    # torch.split with data-dependent sizes: piece i of x along dim d
    "split_piece": OpSpec("{0}[(slice(None),) * {2} + (slice(sum({1}[:{3}]), sum({1}[:{4}])),)]",
                          5, 5, "index"),
    "np.stack": OpSpec("np.stack({0}, axis={1})", 2, 2, "build"),
    "np.concatenate": OpSpec("np.concatenate({0}, axis={1})", 2, 2, "build"),
    "set": OpSpec("set({0})", 1, 1, "build"),
    "slice": OpSpec("slice({0}, {1}, {2})", 3, 3, "build"),
    "setitem": OpSpec("{0}[{1}] = {2}", 3, 3, "effect"),
    "delitem": OpSpec("{0}.__delitem__({1})", 2, 2, "effect"),
    # the values of the loop iterations whose flag is (not) set, after a fused ONNX Loop
    "extend_where": OpSpec("{0}.extend([v for v, f in zip({1}.tolist(), {2}.tolist()) if f])",
                           3, 3, "effect"),
    "extend_where_not": OpSpec(
        "{0}.extend([v for v, f in zip({1}.tolist(), {2}.tolist()) if not f])", 3, 3, "effect"),
    # (lambda names: source)(values): a comprehension over host values; names and source
    # are string literals, the source checked against `runtime/hostcomp.py`
    "comprehension": OpSpec(None, 2, 66, "comprehension"),
}

# builtins the host program may call on host values (what `frontend/ops.py` sends here)
BUILTIN_CALLS = ("max", "min", "sorted", "any", "all", "set", "frozenset", "round", "divmod",
                 "pow", "sum", "list", "tuple", "dict", "abs", "reversed", "str", "repr",
                 "enumerate", "zip", "len", "range", "bool", "int", "float", "format")
# every public function of `math` (pure arithmetic)
MATH_CALLS = tuple(sorted("math." + n for n in dir(math)
                          if not n.startswith("_") and callable(getattr(math, n))))
# numpy functions that compute on arrays (none reads or writes files or evaluates text)
NUMPY_CALLS = tuple("np." + n for n in (
    "abs", "absolute", "add", "all", "allclose", "amax", "amin", "any", "arange", "argmax",
    "argmin", "argsort", "argwhere", "around", "array", "array_equal", "asarray", "ceil",
    "clip", "concatenate", "cos", "count_nonzero", "cumprod", "cumsum", "diff", "divide",
    "dot", "equal", "exp", "expand_dims", "flatnonzero", "floor", "full", "full_like",
    "greater", "isclose", "isfinite", "isinf", "isnan", "less", "log", "log10", "log1p",
    "log2", "logical_and", "logical_not", "logical_or", "matmul", "max", "maximum", "mean",
    "median", "min", "minimum", "multiply", "nonzero", "ones", "ones_like", "percentile",
    "prod", "quantile", "ravel", "reshape", "round", "searchsorted", "sign", "sin", "sort",
    "sqrt", "square", "squeeze", "stack", "std", "subtract", "sum", "take", "tanh", "tile",
    "transpose", "unique", "var", "where", "zeros", "zeros_like", "float32", "float64",
    "int32", "int64", "bool_"))
# methods of host values (lists, dicts, sets, strings, numpy arrays) the program may call
METHODS = ("append", "extend", "insert", "pop", "remove", "clear", "update", "add",
           "setdefault", "discard", "sort", "reverse", "popitem", "index", "count", "copy",
           "keys", "values", "items", "get", "union", "intersection", "difference",
           "issubset", "issuperset", "join", "split", "strip", "lower", "upper", "startswith",
           "endswith", "replace", "tolist", "item", "sum", "mean", "max", "min", "argmax",
           "argmin", "any", "all", "astype", "reshape", "flatten", "ravel", "squeeze",
           "transpose", "clip", "round", "cumsum", "prod", "std", "var", "nonzero")

for _name in BUILTIN_CALLS + MATH_CALLS + NUMPY_CALLS:
    OPS.setdefault(_name, OpSpec(None, 0, 64, "call"))
for _name in METHODS:
    OPS["." + _name] = OpSpec(None, 1, 65, "method")

# names the generated code itself refers to: no host variable may take one
GENERATOR_NAMES = frozenset({"R", "np", "math", "slice_start", "run", "_dyc_error"}
                            | set(BUILTIN_CALLS) | {"slice"})


_CALLABLE = frozenset(BUILTIN_CALLS + MATH_CALLS + NUMPY_CALLS)


def call_name(module: str, name: str, nargs: int) -> str | None:
    """The operator for `module.name(...)` with `nargs` arguments (module '' for a
    builtin; `len`, `set`, `abs`, ... are operators of their own), or None if the host
    program may not call it."""
    op = f"{module}.{name}" if module else name
    spec = OPS.get(op)
    ok = op in _CALLABLE and spec is not None and spec.min_args <= nargs <= spec.max_args
    return op if ok else None


def method_op(name: str) -> str | None:
    """The operator for `value.name(...)`, or None if the host program may not call it."""
    return "." + name if name in METHODS else None


def op_format(name: str, n: int) -> str:
    """The `str.format` pattern of operator `name` with `n` arguments."""
    spec = OPS[name]
    if spec.template is not None:
        return spec.template
    ph = ["{%d}" % i for i in range(n)]
    if spec.kind == "call":
        return f"{name}({', '.join(ph)})"
    if spec.kind == "method":
        return f"{{0}}{name}({', '.join(ph[1:])})"
    if name == "none_of":
        return "(not (" + " or ".join(ph) + "))"
    if name == "range":
        return "range(" + ", ".join(ph) + ")"
    # comprehension: names and source are string literals; hostcode prints it checked
    return "(lambda {0}: {1})(" + ", ".join(ph[2:]) + ")"


def render_op(name: str, args: list[str]) -> str:
    """Python source of operator `name` applied to rendered arguments."""
    return op_format(name, len(args)).format(*args)
