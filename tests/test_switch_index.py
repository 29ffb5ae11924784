"""A module chosen by a data-dependent index (`experts[j]`, `blocks[key]`) is chosen as
Python chooses it: negative indices from the end, IndexError past the end, KeyError for
a missing key; never the last option by default (that was silently wrong)."""

import pytest
import torch
from torch import nn

import dycomp

BACKENDS = ["torch", "onnx"]


class Experts(nn.Module):
    def __init__(self, n: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.experts = nn.ModuleList([nn.Linear(4, 4) for _ in range(n)])

    def forward(self, x, j):
        return self.experts[int(j.item())](x)


class Named(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.blocks = nn.ModuleDict({"b": nn.Linear(4, 4), "a": nn.Linear(4, 4),
                                     "c": nn.Linear(4, 4)})
        self.names = ["a", "b", "c", "zz"]

    def forward(self, x, j):
        return self.blocks[self.names[int(j.item())]](x)


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_list_index_is_pythons(backend, n):
    """Every index from -n to n - 1 runs Python's option; -n - 1, n and beyond raise."""
    model, x = Experts(n), torch.randn(1, 4)
    cm = dycomp.compile(model, (x, torch.tensor(0)), backend=backend)
    for j in range(-n, n):
        torch.testing.assert_close(cm(x, torch.tensor(j)), model(x, torch.tensor(j)))
    for j in (n, -n - 1, n + 4):
        with pytest.raises(IndexError):
            model(x, torch.tensor(j))
        # the host program raises IndexError; a switch fused into ONNX fails in its Gather
        with pytest.raises((IndexError, RuntimeError), match="range|bounds"):
            cm(x, torch.tensor(j))


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_dict_by_a_data_dependent_key(backend):
    model, x = Named(), torch.randn(1, 4)
    cm = dycomp.compile(model, (x, torch.tensor(0)), backend=backend)
    outs = set()
    for j in range(3):
        want = model(x, torch.tensor(j))
        torch.testing.assert_close(cm(x, torch.tensor(j)), want)
        outs.add(round(float(want.detach().sum()), 4))
    assert len(outs) == 3  # three different modules ran
    with pytest.raises(KeyError):
        model(x, torch.tensor(3))
    with pytest.raises(KeyError):
        cm(x, torch.tensor(3))
