"""Indexing a traced tensor with data-dependent ints (`x[:, a:a + p]`, `x[i]` with
`a = int(t.item())`).

The host program computes each bound (Python's clamping and negative indices included,
`slice_start`), checks that the slice keeps the length it had on the example (the region's
shapes are fixed), and passes the start into the region, which cuts with `torch.narrow`
(an ONNX `Slice` whose start is an input).
"""

from __future__ import annotations

import torch

from dycomp.frontend.values import HVal, TVal


def has_host_index(index) -> bool:
    """Whether `index` holds a slice with a data-dependent bound (an HVal). A lone
    data-dependent int index stays in the region (indexing with a 0-d tensor input), which
    keeps loops that index a weight by their counter fusable."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(it, slice) and any(isinstance(b, HVal) for b in (it.start, it.stop))
               for it in items)


def getitem(tr, t: TVal, index):
    """`t[index]`: the static part first (data-dependent entries kept whole), then one
    `narrow` per data-dependent entry."""
    from dycomp.frontend.tracer import user_frame

    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(it, (torch.Tensor, list)) or it is Ellipsis for it in items):
        tr.fail("indexing with data-dependent ints mixed with tensor indices or `...`",
                "index in two steps: the data-dependent slices first")
    static, cuts, dim = [], [], 0
    for it in items:
        if it is None:
            static.append(None)
            dim += 1
        elif isinstance(it, HVal):
            static.append(slice(None))
            cuts.append((dim, it, None, True))
            dim += 1
        elif isinstance(it, slice) and has_host_index(it):
            if it.step not in (None, 1):
                tr.fail("a data-dependent slice with a step", "slice with step 1")
            static.append(slice(None))
            cuts.append((dim, it.start, it.stop, False))
            dim += 1
        else:
            static.append(it)
            dim += 0 if isinstance(it, int) else 1
    out = t[tuple(static)]
    where = user_frame()
    for d, start, stop, single in reversed(cuts):
        n = out._ex.shape[d]
        if d in out._sym:
            tr.fail("a data-dependent slice of a dimension whose size changes across loop "
                    "iterations or between calls (a dynamic input dim)")
        if single:
            pos = tr.host_op("range_index", (n, start), lambda a, b: range(a)[b])
            out = torch.narrow(out, d, pos, 1).squeeze(d)
            continue
        length = len(range(n)[_ex(start):_ex(stop)])
        pos = tr.host_op("slice_start",
                         (n, start, stop, length, where or "slice"), _slice_start)
        out = torch.narrow(out, d, pos, length)
    return out


def _ex(v):
    return int(v._ex) if isinstance(v, HVal) else v


def _slice_start(n, start, stop, length, where):
    from dycomp.runtime.host_index import slice_start

    return slice_start(n, start, stop, length, where)
