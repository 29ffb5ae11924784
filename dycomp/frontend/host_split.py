"""`torch.split` with sizes computed at run time (`(gates > 0).sum(0).tolist()`).

The sizes are a host list, so the pieces are cut on the host and enter later regions
with a symbolic dimension (ONNX dynamic axis): no re-specialization per call.
"""

from __future__ import annotations

from dycomp.frontend.values import HVal, TVal


def host_sizes(func_name: str, args: tuple, kwargs: dict):
    """The run-time split sizes of a `split` call, or None if they are static."""
    if func_name != "split" or len(args) < 2 and "split_size_or_sections" not in kwargs:
        return None
    sizes = args[1] if len(args) > 1 else kwargs["split_size_or_sections"]
    if isinstance(sizes, HVal) or (isinstance(sizes, (list, tuple))
                                   and any(isinstance(s, HVal) for s in sizes)):
        return sizes
    return None


def split_on_host(tr, x: TVal, sizes, args: tuple, kwargs: dict) -> tuple:
    """One host slice per piece: `x[..., sum(s[:i]):sum(s[:i+1])]` along `dim`."""
    dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    if not isinstance(dim, int):
        tr.fail("torch.split along a data-dependent dimension")
    d = dim % x._ex.dim()
    if isinstance(sizes, HVal):
        n = sizes._static_len
    else:
        n = len(sizes)
    if n is None:
        tr.fail("torch.split into a data-dependent number of pieces",
                "split into a fixed number of pieces (sizes may depend on the data)")
    pieces = []
    for i in range(n):
        def cut(a, s, d, i, j):
            return a[(slice(None),) * d + (slice(sum(s[:i]), sum(s[:j])),)]

        piece = tr.host_op("split_piece", (x, sizes, d, i, i + 1), cut)
        piece._sym = frozenset({d})
        pieces.append(piece)
    return tuple(pieces)
