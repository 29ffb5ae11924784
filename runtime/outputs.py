"""Naming the leaves of a nested output: `dycomp run --out` and `dycomp serve` save or
send them as named arrays (`out_0`, `out_1_2`, `out_logits`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def flatten_outputs(value, key: str = "out") -> Iterator[tuple[str, object]]:
    """(key, leaf) pairs of a nested output: tuples, lists and dicts add `_<index or key>`;
    a list of Python numbers (or an empty list) stays one leaf, saved as one array."""
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        yield key, value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            yield from flatten_outputs(v, f"{key}_{i}")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from flatten_outputs(v, f"{key}_{k}")
    else:
        yield key, value


def _is_scalar(v) -> bool:
    return isinstance(v, (bool, int, float, np.generic))
