"""Which dimensions of a traced op's outputs vary between calls.

A dimension varies (is symbolic, `TVal._sym`) when it comes from a loop-carried value that
grows or shrinks, or from an op whose output size depends on the *values* of its inputs
(`x[mask]`, `nonzero`, `masked_select`, `unique`, ...), and then through every op computed
from such values. Shape reads of a varying dimension (`y.size(0)`, `len(y)`, `y.shape`) are
host values read at run time (`torchfn._sym_shape`), and ONNX exports those dimensions as
dynamic axes; without this they would be frozen at the example's size (silently wrong).

Propagation through an op runs it a second time on *alternate* examples whose varying
dimensions are one larger: the output dimensions whose size differs vary.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map

from dycomp.frontend.values import HVal, TVal

log = logging.getLogger(__name__)

# ops whose output size depends on input values: name -> dims that vary ("all": every dim)
_VALUE_DEPENDENT = {"nonzero": (0,), "argwhere": (0,), "masked_select": (0,),
                    "unique": "unique", "_unique": (0,), "_unique2": "unique",
                    "unique_consecutive": "unique", "repeat_interleave": "repeat",
                    "where": "where", "nonzero_static": ()}


def _is_mask(v) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype in (torch.bool, torch.uint8)


def _index_items(index):
    return index if isinstance(index, tuple) else (index,)


def _value_dims(name, args, kwargs, n_out) -> list | None:
    """Per tensor output, the dims a value-dependent op makes vary; None if it is not one."""
    if name == "__getitem__":
        items = _index_items(args[1]) if len(args) > 1 else ()
        if not any(_is_mask(i) or isinstance(i, (list, tuple)) and any(map(_is_mask, i))
                   for i in items):
            return None
        return [None] * n_out  # the masked dimension's position: found by _mask_dims
    rule = _VALUE_DEPENDENT.get(name)
    if rule is None:
        return None
    if rule == "where":
        return [(0,)] * n_out if len(args) + len(kwargs) == 1 else None
    if rule == "repeat":
        reps = args[1] if len(args) > 1 else kwargs.get("repeats")
        if not isinstance(reps, torch.Tensor) or reps.dim() == 0:
            return None
        dim = args[2] if len(args) > 2 else kwargs.get("dim")
        return [(0,) if dim is None else (dim,)] * n_out
    if rule == "unique":
        dim = kwargs.get("dim")
        return [(0,) if dim is None else (dim,)] + [(0,)] * (n_out - 1)
    return [rule] * n_out


def _mask_dims(args, out: torch.Tensor) -> set:
    """`x[..., mask, ...]`: the output dims the mask's elements select (one per mask; a
    mask of rank k collapses k dims into one)."""
    items, dims, d = _index_items(args[1]), set(), 0
    if any(i is Ellipsis for i in items):
        return set(range(out.dim()))  # position unclear: every dim varies (safe)
    for it in items:
        if it is None:
            d += 1
        elif _is_mask(it):
            dims.add(d)
            d += 1
        elif isinstance(it, int) and not isinstance(it, bool):
            continue
        elif isinstance(it, torch.Tensor) and it.dim() == 0:
            continue
        else:
            d += 1
    return {x for x in dims if x < out.dim()} or set(range(out.dim()))


def _grow(ex: torch.Tensor, sym) -> torch.Tensor:
    """`ex` one larger along each of its varying dims (values repeated cyclically)."""
    for d in sorted(x for x in sym if x < ex.dim()):
        n = ex.shape[d]
        if n == 0:
            shape = list(ex.shape)
            shape[d] = 1
            ex = torch.zeros(shape, dtype=ex.dtype)
        else:
            ex = ex.index_select(d, torch.arange(n + 1) % n)
    return ex


def host_int(v) -> bool:
    """A data-dependent int (`n = y.size(0)`, `int(t.item())`): as a size, it varies."""
    return isinstance(v, HVal) and isinstance(v._ex, (int, np.integer)) and not isinstance(
        v._ex, (bool, np.bool_))


def _alt(v):
    if isinstance(v, TVal):
        return _grow(v._ex, v._sym) if v._sym else v._ex
    if isinstance(v, HVal):
        from dycomp.frontend.tracer import _as_tensor

        return _as_tensor(v._ex + 1 if host_int(v) else v._ex)
    return v


def _has_sym(args, kwargs) -> bool:
    return any(isinstance(x, TVal) and x._sym or host_int(x)
               for x in tree_flatten((args, kwargs))[0])


def out_syms(fn, name, args, kwargs, out) -> list | None:
    """Per tensor leaf of `out` (tree_flatten order), the dims that vary; None when none
    can (no varying input, not a value-dependent op)."""
    leaves = [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
    value = _value_dims(name, args, kwargs, len(leaves))
    if value is None and not _has_sym(args, kwargs):
        return None
    syms = [set() for _ in leaves]
    if value is not None:
        for s, dims, leaf in zip(syms, value, leaves):
            if dims is None:
                s |= _mask_dims(args, leaf)
            else:
                s |= {d % max(leaf.dim(), 1) for d in dims} & set(range(leaf.dim()))
    if _has_sym(args, kwargs):
        _propagate(fn, name, args, kwargs, leaves, syms)
    return [frozenset(s) for s in syms]


def _propagate(fn, name, args, kwargs, leaves, syms) -> None:
    """Add to `syms` the dims whose size changes when the varying inputs grow."""
    try:
        with torch._C.DisableTorchFunctionSubclass(), torch.no_grad():
            alt = fn(*tree_map(_alt, args), **tree_map(_alt, kwargs))
        alts = [x for x in tree_flatten(alt)[0] if isinstance(x, torch.Tensor)]
    except Exception as e:  # sizes that broadcast only at the example's: assume the worst
        log.debug("%s on grown examples failed (%s): its dims of a varying size vary", name, e)
        given = tree_flatten((args, kwargs))[0]
        sizes = {t._ex.shape[d] for t in given
                 if isinstance(t, TVal) for d in t._sym if d < t._ex.dim()}
        sizes |= {int(v._ex) for v in given if host_int(v)}  # `x.view(n * 2, -1)`
        for s, leaf in zip(syms, leaves):
            s |= {d for d in range(leaf.dim()) if leaf.shape[d] in sizes}
        return
    if len(alts) != len(leaves):  # `unbind` / `split` along a varying dim
        from dycomp.frontend.values import tracer

        tracer().fail(f"`{name}` gives a number of tensors that depends on the data (it "
                      "splits a dimension whose size changes at run time)",
                      "keep it one tensor (index or mask it), or iterate over its rows "
                      "with a `for` loop in the model's own code")
    for s, leaf, a in zip(syms, leaves, alts):
        if a.dim() != leaf.dim():
            s |= set(range(max(a.dim(), leaf.dim())))
        else:
            s |= {d for d in range(leaf.dim()) if a.shape[d] != leaf.shape[d]}


def list_sym(v: HVal) -> frozenset:
    """Dimensions of a host list passed to a region whose length depends on the data."""
    if v._static_len is not None or not isinstance(v._ex, (list, tuple, np.ndarray)):
        return frozenset()
    return frozenset({0})
