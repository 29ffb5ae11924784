"""Which dimensions of a traced op's result change size between runs.

A tensor whose size varies at run time (a loop-carried beam that shrinks, rows picked
by a host index list, `topk(k)` with a host `k`) passes that variation on to what is
computed from it. The op is run a second time on meta tensors whose symbolic sizes
(and host integers) differ from the example's; the result dimensions whose sizes then
differ are symbolic, so shape queries on them stay host values computed at run time
(`len(next_word_inds)`) instead of constants frozen from the example.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_map

from dycomp.frontend.values import HVal, TVal

_BUMP = 2  # how much larger a symbolic size (or a host integer) is in the second run


def mark(result, fn, args, kwargs) -> None:
    """Set `_sym` on the TVals of `result`, the outputs of `fn(*args, **kwargs)`."""
    if not _varies(args, kwargs):
        return
    outs = [t for t in tree_flatten(result)[0] if isinstance(t, TVal)]
    alts = _alt_outputs(fn, args, kwargs)
    if alts is None or len(alts) != len(outs):
        alts = [None] * len(outs)
    for t, alt in zip(outs, alts):
        ex = t._ex
        if alt is None or alt.dim() != ex.dim():
            t._sym = frozenset(range(ex.dim()))
        else:
            t._sym = frozenset(i for i, (a, b) in enumerate(zip(ex.shape, alt.shape)) if a != b)


def list_sym(v: HVal) -> frozenset:
    """Dimensions of a host list passed to a region whose length depends on the data."""
    if v._static_len is not None or not isinstance(v._ex, (list, tuple, np.ndarray)):
        return frozenset()
    return frozenset({0})


def _varies(args, kwargs) -> bool:
    leaves = tree_flatten((args, kwargs))[0]
    return any((isinstance(x, TVal) and x._sym) or isinstance(x, HVal) for x in leaves)


def _alt_outputs(fn, args, kwargs):
    """The outputs on meta inputs: host ints and symbolic sizes larger; then sizes only;
    then only sizes other than 1 (a symbolic dimension of size 1 that broadcasts)."""
    for bump, ones in ((True, True), (False, True), (False, False)):
        try:
            alt_args, alt_kwargs = tree_map(lambda v, b=bump, o=ones: _alt(v, b, o),
                                            (args, kwargs))
            with torch._C.DisableTorchFunctionSubclass():
                out = _call(fn, alt_args, alt_kwargs)
        except Exception:  # noqa: BLE001 - a meta run that fails says nothing: try the next
            continue
        return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return None


def _call(fn, args, kwargs):
    if isinstance(fn, torch.nn.Module):
        state = {k: v.to("meta") for k, v in list(fn.named_parameters())
                 + list(fn.named_buffers())}
        return functional_call(fn, state, tuple(args), kwargs)
    return fn(*args, **kwargs)


def _alt(v, bump: bool, ones: bool):
    if isinstance(v, TVal):
        shape = [s + _BUMP if i in v._sym and (ones or s != 1) else s
                 for i, s in enumerate(v._ex.shape)]
        return torch.empty(shape, dtype=v._ex.dtype, device="meta")
    if isinstance(v, HVal):
        ex = v._ex
        if isinstance(ex, (int, np.integer)) and not isinstance(ex, (bool, np.bool_)):
            return int(ex) + (_BUMP if bump else 0)
        from dycomp.frontend.tracer import _as_tensor

        t = _as_tensor(ex)
        shape = [s + _BUMP if i in list_sym(v) else s for i, s in enumerate(t.shape)]
        return torch.empty(shape, dtype=t.dtype, device="meta")
    if isinstance(v, torch.Tensor):
        return v.detach().to("meta")
    return v
