"""Equivalent forms of tensor operations that torch.onnx exports wrongly.

`index_add` exports as a plain ScatterElements, which keeps one of the rows an index
repeats instead of their sum (the exporter's own warning says so; the mixture-of-experts
combine repeats every row k times). `scatter_add` with the index broadcast along the
other dimensions is the same operation and exports as ScatterElements(reduction="add").
"""

from __future__ import annotations

import torch


def index_add(self: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor,
              *, alpha=1) -> torch.Tensor:
    """`self.index_add(dim, index, source, alpha=alpha)` as a `scatter_add`."""
    dim = dim % self.dim()
    if source.dim() == 0:
        source = source.reshape([1] * self.dim())
    shape = [-1 if d == dim else 1 for d in range(source.dim())]
    idx = index.reshape(shape).expand_as(source)
    if not (isinstance(alpha, (int, float)) and alpha == 1):
        source = source * alpha
    return self.scatter_add(dim, idx, source)


REPLACE = {"index_add": index_add}
