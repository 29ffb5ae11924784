"""The per-call entry of a CompiledModel, specialised to its signature once.

A call `cm(x)` used to flatten its arguments with pytree (5.8 us), compare dtypes as
strings (2.2 us each) and copy every output (benchmarks/README.md, "The per-call
floor"). What depends only on the signature is decided here, at construction: a
function is generated whose code checks each positional argument's type, dtype (`is`)
and shape (one tuple comparison) and hands the arrays to the host program, torch
tensors as zero-copy numpy views. Anything it does not expect (keywords, another count,
a wrong shape or dtype, a tensor needing grad or on another device, a subclass) goes to
the general path, which converts what it can and raises the `ValueError` naming the
signature for the rest, so the errors are those of the general path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

_SCALARS = (int, float, bool, str, type(None))
from_numpy = torch.from_numpy


def build(spec, run: Callable, slow: Callable) -> Callable:
    """`call(args, kwargs)`: `run(*arrays)` on the tensor arguments of a call matching
    `spec` (an InputSpec whose leaves are the positional arguments), outputs as torch
    tensors when the inputs were; `slow(args, kwargs)` for any other call."""
    n = _positional_count(spec)
    if n is None:
        return slow
    names, env = [], {"run": run, "slow": slow, "to_torch": to_torch,
                       "Tensor": torch.Tensor, "ndarray": np.ndarray}
    params = [f"a{i}" for i in range(n)]
    torch_checks, numpy_checks = [], []
    sizes: dict = {}  # dynamic dim name -> `a0.shape[0]`, its first occurrence
    for i, (t, static) in enumerate(zip(spec.tensor, spec.static)):
        a = params[i]
        if t is None:  # a baked Python value: same type and value, not passed on
            env[f"s{i}"], env[f"st{i}"] = static, type(static)
            same = f"type({a}) is st{i} and {a} == s{i}"
            torch_checks.append(same)
            numpy_checks.append(same)
            continue
        dtype, shape = t
        env[f"d{i}"], env[f"n{i}"], env[f"sh{i}"] = dtype, _np_dtype(dtype), tuple(shape)
        fits = _shape_test(a, i, spec, sizes) if spec.dynamic else f"{a}.shape == sh{i}"
        torch_checks.append(f"type({a}) is Tensor and {a}.dtype is d{i} and {fits}"
                            f" and {a}.is_cpu and not {a}.requires_grad")
        numpy_checks.append(f"type({a}) is ndarray and {a}.dtype is n{i} and {fits}")
        names.append(a)
    unpack = f"    {', '.join(params)}{',' if n == 1 else ''} = args\n" if n else ""
    torch_args = ", ".join(f"{a}.numpy()" for a in names)
    lines = [
        "def call(args, kwargs):",
        f"    if kwargs or len(args) != {n}:",
        "        return slow(args, kwargs)",
        unpack.rstrip("\n") or "    pass",
        f"    if {' and '.join(numpy_checks) or 'True'}:",
        f"        return run({', '.join(names)})",
        f"    if {' and '.join(torch_checks) or 'False'}:",
        f"        return to_torch(run({torch_args}))",
        "    return slow(args, kwargs)",
    ]
    exec(compile("\n".join(lines), "<dycomp call entry>", "exec"), env)
    return env["call"]


def _shape_test(a: str, i: int, spec, sizes: dict) -> str:
    """Code testing argument `a`'s shape against leaf `i`'s: its rank, its fixed sizes,
    and each dynamic dim equal to that name's first occurrence (`sizes`)."""
    shape = spec.shape(i)
    tests = [f"len({a}.shape) == {len(shape)}"]
    for d, s in enumerate(shape):
        if not isinstance(s, str):
            tests.append(f"{a}.shape[{d}] == {int(s)}")
        elif s in sizes:
            tests.append(f"{a}.shape[{d}] == {sizes[s]}")
        else:
            sizes[s] = f"{a}.shape[{d}]"
    return "(" + " and ".join(tests) + ")"


def _positional_count(spec) -> int | None:
    """How many positional arguments a call has when every leaf is one (no keywords, no
    containers, baked values only of plain Python scalar types); None otherwise."""
    try:
        args_spec, kwargs_spec = spec.treespec.children()
    except (AttributeError, ValueError):
        return None
    if kwargs_spec.num_children or args_spec.type is not tuple:
        return None
    if not all(c.is_leaf() for c in args_spec.children()):
        return None  # a container argument: the general path flattens it
    if any(t is None and type(s) not in _SCALARS for t, s in zip(spec.tensor, spec.static)):
        return None
    return args_spec.num_children


def _np_dtype(dtype: torch.dtype) -> np.dtype | None:
    try:
        return torch.empty((), dtype=dtype).numpy().dtype
    except TypeError:  # no numpy equivalent (bfloat16): never the fast path
        return None


def to_torch(out):
    """`out` (the host program's result) with every numpy array as a torch tensor sharing
    its memory (a copy only of an array torch cannot share: read-only, negative
    strides); plain tuples, lists and dicts rebuilt, other containers by pytree."""
    t = type(out)
    if t is np.ndarray:
        if out.flags.writeable:
            try:
                return from_numpy(out)
            except (ValueError, TypeError):  # negative strides, a dtype torch lacks
                pass
        return from_numpy(np.array(out))
    if t is tuple:
        return tuple(map(to_torch, out))
    if t is list:
        return list(map(to_torch, out))
    if t is dict:
        return {k: to_torch(v) for k, v in out.items()}
    if t in _SCALARS:
        return out
    from torch.utils._pytree import tree_map  # namedtuples, OrderedDict, numpy scalars

    return tree_map(lambda x: to_torch(x) if isinstance(x, np.ndarray) else x, out)
