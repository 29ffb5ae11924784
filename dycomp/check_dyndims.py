"""Self-check of a model compiled with dynamic input dims, at sizes other than the example's.

The path check (`check_paths`) runs at the example's sizes; a region or host program that
baked one of them in (a shape read as a constant, a reshape to the example's size) would
pass it and be wrong at every other size. Here eager and compiled run on inputs whose
dynamic dims take other sizes (two besides the example's): same outputs, or both raise;
and at each of those sizes every decision arm is forced on both sides (`path_check` on
the resized example), so an arm random inputs do not reach is checked at every size.
"""

from __future__ import annotations

import logging

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from dycomp.check import compare, variants
from dycomp.check_paths import _eager_outcome
from dycomp.errors import MismatchError

log = logging.getLogger(__name__)


def other_sizes(example: dict[str, int]) -> list[dict[str, int]]:
    """Two sizes per dynamic dim name to check besides the example's: 1 and example + 2,
    or (an example of size 1) 3 and 6."""
    out = []
    for pick in (lambda n: 1, lambda n: n + 2, lambda n: 2 * n + 4):
        sizes = {name: pick(n) for name, n in example.items()}
        if sizes != example and sizes not in out and len(out) < 2:
            out.append(sizes)
    return out


def resized(args: tuple, kwargs: dict, spec, sizes: dict[str, int]) -> tuple[tuple, dict]:
    """The example inputs with each dynamic dim at `sizes[name]` (values repeated
    cyclically along it, so tokens and indices stay valid)."""
    leaves, tree = tree_flatten((args, kwargs))
    out = []
    for i, leaf in enumerate(leaves):
        for d, name in (spec.dynamic[i] if isinstance(leaf, torch.Tensor) else {}).items():
            n = leaf.shape[d]
            leaf = leaf.index_select(d, torch.arange(sizes[name]) % max(n, 1))
        out.append(leaf)
    return tree_unflatten(out, tree)


def example_sizes(args: tuple, kwargs: dict, spec) -> dict[str, int]:
    leaves = tree_flatten((args, kwargs))[0]
    return {name: int(leaves[i].shape[d]) for i, dims in enumerate(spec.dynamic)
            for d, name in dims.items()}


def check_sizes(fn, cm, args: tuple, kwargs: dict, n: int = 3) -> int:
    """Compare eager and compiled at other sizes of the dynamic dims, random inputs and
    every decision arm forced; MismatchError naming the sizes on a difference. Returns
    how many inputs ran."""
    from dycomp.check_paths import path_check

    count = 0
    for sizes in other_sizes(example_sizes(args, kwargs, cm.spec)):
        a0, k0 = resized(args, kwargs, cm.spec, sizes)
        if _eager_raises(fn, a0, k0):
            log.info("dynamic dims: eager refuses %s; not forced there", _fmt(sizes))
        else:
            try:
                path_check(fn, cm, a0, k0, n=0)
            except MismatchError as e:
                raise MismatchError(f"dynamic dims, at {_fmt(sizes)}: {e}") from None
        for i, (a, k) in enumerate(variants(a0, k0, n, seed=count + 1)):
            expected = _eager_outcome(fn, a, k)
            try:
                actual = cm.run(*a, **k)
            except Exception as e:
                actual = e
            _verdict(expected, actual, f"input #{i} at {_fmt(sizes)}")
            count += 1
    log.info("dynamic dims checked on %d inputs at other sizes", count)
    return count


def _eager_raises(fn, args: tuple, kwargs: dict) -> bool:
    return isinstance(_eager_outcome(fn, args, kwargs), BaseException)


def _verdict(expected, actual, where: str) -> None:
    e_raised, a_raised = (isinstance(x, BaseException) for x in (expected, actual))
    if e_raised and a_raised:
        return  # the model does not take this size; the compiled one says so too
    if e_raised or a_raised:
        what = (f"eager raised {type(expected).__name__}({expected}) but the compiled model "
                "returned" if e_raised else
                f"the compiled model raised {type(actual).__name__}({actual}) but eager did not")
        raise MismatchError(f"dynamic dims: {what} on {where}")
    diff = compare(expected, actual)
    if diff:
        raise MismatchError(f"dynamic dims: compiled model differs from eager on {where}: "
                            f"{diff} (a size the example fixed is baked in somewhere)")


def _fmt(sizes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())
