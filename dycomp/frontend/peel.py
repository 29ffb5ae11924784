"""Peeling the first iteration of a data-dependent `while` loop.

A loop-carried value that is a Python value before the loop and a tensor after the
first iteration (`h = None` then `h = cell(x, h)`, `acc = 0` then `acc = acc + t`)
would be carried as "a tensor, or the Python value": code in the body that tests it
(`0 if h is None else h`) then joins a number with a tensor, which a region cannot
type (ONNX fixes its inputs' types from the first example). Instead the first
iteration is traced once on its own, with the Python value, and the host loop then
runs the remaining iterations with a value that is a tensor on every iteration.
"""

from __future__ import annotations

import logging

from dycomp.errors import UnsupportedError
from dycomp.frontend import unroll as _unroll

log = logging.getLogger(__name__)


class PeelFirst(Exception):
    """Raised by a host loop whose carried values turn from Python values into tensors."""


def turns_tensor(kinds, seen_kinds) -> bool:
    """Whether a carried value's kind (ops._kind) is a host value before the loop and a
    tensor after an iteration."""
    for a, b in zip(kinds, seen_kinds):
        if a[0] == "H" and b[0] == "T":
            return True
        if a[0] == "C" and b[0] == "C" and turns_tensor(a[1:], b[1:]):
            return True
    return False


def host_or_peeled(t, host_loop, peeled, get, set_):
    """Trace `host_loop()`; if it raises PeelFirst, roll back and run `peeled()`. A body
    that cannot be traced on the values before the loop widened to the loop's kinds
    (`h * 0.5` on `h` "None or a tensor") is peeled too; if that fails as well, the
    host loop's error is raised."""
    init = get()
    cp = _unroll.checkpoint(t)
    try:
        return host_loop()
    except PeelFirst:
        first_error = None
    except UnsupportedError as e:
        first_error = e
    log.debug("first iteration of a host loop peeled (%s)", first_error or "becomes a tensor")
    _unroll.rollback(t, cp)
    set_(init)
    if first_error is None:
        return peeled()
    try:
        return peeled()
    except UnsupportedError:
        raise first_error from None
