"""Reference backend: each region runs as its FX GraphModule in PyTorch."""

from __future__ import annotations

import numpy as np
import torch


class TorchExecutor:
    def __init__(self, graph):
        self.modules = {name: r.gm for name, r in graph.regions.items()}
        self.input_dtypes = {name: [n.meta["example"].dtype for n in r.placeholders]
                             for name, r in graph.regions.items()}

    def __call__(self, region: str, *args) -> tuple:
        dtypes = self.input_dtypes[region]
        tensors = [_to_torch(a, d) for a, d in zip(args, dtypes)]
        with torch.no_grad():
            outs = self.modules[region](*tensors)
        return tuple(o.detach().numpy() if isinstance(o, torch.Tensor) else o for o in outs)


def _to_torch(a, dtype):
    if isinstance(a, np.ndarray):
        if not a.flags.writeable:
            a = a.copy()
        return torch.from_numpy(a)
    if isinstance(a, torch.Tensor):
        return a
    return torch.tensor(np.asarray(a).tolist() if isinstance(a, np.generic) else a, dtype=dtype)
