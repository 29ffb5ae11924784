"""Helpers the host program calls for data-dependent indexing (numpy-free, no torch)."""

from __future__ import annotations


def slice_start(n: int, start, stop, length: int, where: str) -> int:
    """Start of `[start:stop]` on a dimension of size `n`, with Python's clamping and
    negative indices. The compiled region cuts `length` elements from there: a slice of
    any other length raises (the region's shapes were fixed at compile time)."""
    r = range(n)[start:stop]
    if len(r) != length:
        raise ValueError(f"{where}: the slice [{start}:{stop}] of a dimension of size {n} has "
                         f"{len(r)} elements; the model was compiled for slices of {length} "
                         "(a data-dependent slice must keep its length)")
    return r.start
