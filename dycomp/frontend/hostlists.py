"""`torch.cat` / `torch.stack` of a host list of tensors (one appended to in a host loop,
whose length depends on the data): the host program joins the arrays with numpy, and the
joined array's dimensions vary between calls."""

from __future__ import annotations

import numpy as np
import torch

from dycomp.frontend.values import HVal, TVal

_JOINS = {torch.cat: "concatenate", torch.concat: "concatenate",
          torch.concatenate: "concatenate", torch.stack: "stack"}


def is_host_join(func, args) -> bool:
    """`torch.cat(words)` where `words` is a host list."""
    return func in _JOINS and bool(args) and isinstance(args[0], HVal) and isinstance(
        args[0]._ex, list)


def host_join(tr, func, args, kwargs) -> TVal:
    if len(args) > 2 or set(kwargs) - {"dim", "axis"}:
        tr.fail(f"{func.__name__} of a data-dependent list with other arguments than dim")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
    if not isinstance(dim, int):
        tr.fail(f"{func.__name__} of a data-dependent list along a data-dependent dim")
    name = _JOINS[func]
    out = tr.host_op("np." + name, (args[0], dim),
                     lambda a, d: getattr(np, name)([np.asarray(x) for x in a], axis=d))
    # every dimension varies: the joined one with the list's length, the others with
    # the elements' own sizes (a beam that shrinks)
    return TVal(out._ex, var=out._var, sym=frozenset(range(out._ex.dim())))
