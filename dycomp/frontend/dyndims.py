"""Input dimensions that vary between calls (`dycomp.compile(..., dynamic_dims=...)`).

`dynamic_dims={"x": {0: "batch"}}` traces dim 0 of input `x` as symbolic (`TVal._sym`,
the machinery of `symdims.py`): shape reads of it are host values read at run time, the
regions it flows into export it as a dynamic axis. What would need its size as a single
scalar (`bool(t)`, `t.item()` of a tensor whose element count depends on it) is refused:
eager PyTorch itself answers only at size 1.
"""

from __future__ import annotations

import re

from dycomp.errors import UnsupportedError  # no torch at import: the CLI parses --dynamic

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCALAR_READS = {"bool": "its truth value (`if t:`, `bool(t)`)", "item": "`.item()`",
                "int_item": "`int(t)`", "float_item": "`float(t)`"}


def leaf_dims(dynamic_dims: dict | None, names: list[str], leaves: list) -> list[dict]:
    """Per flat input leaf, `{dim: name}` of its dynamic dims (validated)."""
    import torch

    out: list[dict] = [{} for _ in leaves]
    if not dynamic_dims:
        return out
    if not isinstance(dynamic_dims, dict):
        raise UnsupportedError(f"dynamic_dims must be a dict, got {type(dynamic_dims).__name__}",
                               hint='dynamic_dims={"x": {0: "batch"}}')
    sizes: dict[str, tuple[str, int]] = {}
    for key, dims in dynamic_dims.items():
        if key not in names:
            raise UnsupportedError(f"dynamic_dims names input {key!r}, which the model does "
                                   "not take", hint=f"inputs: {', '.join(names)}")
        i = names.index(key)
        leaf = leaves[i]
        if not isinstance(leaf, torch.Tensor):
            raise UnsupportedError(f"dynamic_dims: input {key!r} is a {type(leaf).__name__}, "
                                   "not a tensor", hint="only tensor inputs have dimensions")
        if not isinstance(dims, dict) or not dims:
            raise UnsupportedError(f"dynamic_dims[{key!r}] must be a non-empty dict "
                                   "{dim: name}", hint='dynamic_dims={"x": {0: "batch"}}')
        for d, name in dims.items():
            _add_dim(out[i], key, leaf, d, name, sizes)
    return out


def _add_dim(dims: dict, key: str, leaf, d, name, sizes: dict) -> None:
    if isinstance(d, bool) or not isinstance(d, int) or not -leaf.dim() <= d < leaf.dim():
        raise UnsupportedError(f"dynamic_dims[{key!r}]: dim {d!r} is out of range for an "
                               f"input of shape {list(leaf.shape)}",
                               hint=f"a dim in 0..{leaf.dim() - 1}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UnsupportedError(f"dynamic_dims[{key!r}][{d}]: name {name!r} is not an "
                               "identifier", hint='name it like "batch" or "seq"')
    d %= leaf.dim()
    size = int(leaf.shape[d])
    first = sizes.setdefault(name, (f"{key} dim {d}", size))
    if first[1] != size:
        raise UnsupportedError(f"dynamic dim {name!r} is {first[1]} on {first[0]} but {size} "
                               f"on {key} dim {d} in the example inputs",
                               hint="one name means one size: give the examples equal sizes")
    dims[d] = name


def parse_cli(items: list[str] | None) -> dict | None:
    """`["x:0=batch", "x:1=seq"]` (CLI `--dynamic`) as `{"x": {0: "batch", 1: "seq"}}`."""
    if not items:
        return None
    out: dict = {}
    for item in items:
        m = re.match(r"^([^:=]+):(-?\d+)=([A-Za-z_][A-Za-z0-9_]*)$", item.strip())
        if m is None:
            raise UnsupportedError(f"--dynamic {item!r} is not INPUT:DIM=NAME",
                                   hint="e.g. --dynamic x:0=batch")
        out.setdefault(m.group(1), {})[int(m.group(2))] = m.group(3)
    return out


def check_scalar_read(tr, op: str, args) -> None:
    """Refuse a scalar read (`bool`, `.item()`) of a tensor whose element count depends on
    a dynamic input dim: eager answers only when that size is 1, so the answer computed
    for the example's size would be baked in or fail at other sizes."""
    from dycomp.frontend.values import TVal

    if not getattr(tr, "dynamic_inputs", False) or op not in SCALAR_READS or not args:
        return
    t = args[0]
    if isinstance(t, TVal) and t._ex.dim() and any(d < t._ex.dim() for d in t._sym):
        tr.fail(f"{SCALAR_READS[op]} of a tensor of shape {list(t._ex.shape)} whose "
                f"dims {sorted(t._sym)} vary with a dynamic input dim (eager PyTorch only "
                "answers when that size is 1)",
                "reduce it first (`.any()`, `.all()`, `.max()`), or compile without "
                "dynamic_dims for this input")


def shape_ok(shape, spec_shape: tuple) -> bool:
    """`shape` has `spec_shape`'s rank and its fixed sizes (names take any size)."""
    return len(shape) == len(spec_shape) and all(
        isinstance(s, str) or s == n for s, n in zip(spec_shape, shape))


def same_sizes(spec, arrays: list) -> None:
    """ValueError unless every dynamic dim's name has one size across the tensor inputs
    (`arrays`, in tensor-leaf order)."""
    seen: dict[str, tuple[str, int]] = {}
    tensors = [i for i, t in enumerate(spec.tensor) if t is not None]
    for i, arr in zip(tensors, arrays):
        for d, name in spec.dynamic[i].items():
            where = f"{spec.names[i]} dim {d}"
            first = seen.setdefault(name, (where, arr.shape[d]))
            if first[1] != arr.shape[d]:
                raise ValueError(f"dynamic dim {name!r} is {first[1]} on {first[0]} but "
                                 f"{arr.shape[d]} on {where}; expected {spec.describe()}")
