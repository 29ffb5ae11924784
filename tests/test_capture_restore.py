"""Capture leaves the user's objects as they were, when it fails half-way too.

The model below changes module-level state (a list behind an attribute chain that a
data-dependent branch rebinds, a global list, a global dict), its own attributes and a
list attribute, then fails (an unsupported construct) or returns. After every compile the
user's objects hold what they held before, and a second compile behaves like the first.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn as nn

import dycomp
from tests.helpers import assert_matches_eager, randn_inputs

TRACE = types.SimpleNamespace(calls=["start"])  # module-level user state
HISTORY: list = [0]
COUNTS: dict = {"calls": 0}
TAGS: set = {"init"}


class Halfway(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.seen = ["init"]
        self.explode = True

    def forward(self, x):
        del TRACE.calls[:]  # fails with AttributeError if TRACE.calls became a dycomp value
        h = self.fc(x)
        if h.sum() > 0:
            TRACE.calls = TRACE.calls + ["pos"]  # a chain rebound in a branch
            y = h * 2
        else:
            TRACE.calls = TRACE.calls + ["neg"]
            y = h - 1
        HISTORY.append(y)
        COUNTS["calls"] = COUNTS["calls"] + 1
        COUNTS["last"] = y
        TAGS.add("called")
        self.seen.append(y)
        self.cache = y
        self.fc.weight.data = self.fc.weight.data * 1.0
        if self.explode:
            print("{:.3f}".format(y.sum().item()))  # noqa: UP032 (str.format: unsupported)
        return y


def _user_objects(model):
    return {"TRACE": (TRACE, TRACE.calls, list(TRACE.calls)),
            "HISTORY": (HISTORY, list(HISTORY)), "COUNTS": (COUNTS, dict(COUNTS)),
            "TAGS": set(TAGS),
            "attrs": sorted(vars(model)), "seen": (model.seen, list(model.seen)),
            "weight": model.fc.weight.detach().clone(), "modules": list(model.modules())}


def _assert_unchanged(model, before):
    after = _user_objects(model)
    assert after["TRACE"][1] is before["TRACE"][1] and after["TRACE"][2] == before["TRACE"][2]
    assert isinstance(TRACE.calls, list)
    assert HISTORY is before["HISTORY"][0] and HISTORY == before["HISTORY"][1]
    assert COUNTS == before["COUNTS"][1] and TAGS == before["TAGS"]
    assert after["attrs"] == before["attrs"] and not hasattr(model, "cache")
    assert model.seen == before["seen"][1]
    assert type(model.fc.weight.data) is torch.Tensor
    assert torch.equal(model.fc.weight, before["weight"])
    assert after["modules"] == before["modules"]


def test_failed_capture_restores_user_objects_and_second_compile_behaves_alike():
    torch.manual_seed(0)
    model = Halfway().eval()
    x = torch.randn(1, 4)
    before = _user_objects(model)
    errors = []
    for _ in range(2):
        with pytest.raises(dycomp.UnsupportedError) as info:
            dycomp.compile(model, (x,))
        errors.append(str(info.value))
        _assert_unchanged(model, before)
    assert ".format() with data-dependent arguments" in errors[0] and errors[0] == errors[1]


def test_successful_capture_restores_user_objects():
    torch.manual_seed(0)
    model = Halfway().eval()
    model.explode = False
    inputs = randn_inputs((1, 4), 8, seed=1)
    before = _user_objects(model)
    cm = dycomp.compile(model, (inputs[0],), check=False)
    _assert_unchanged(model, before)
    cm2 = dycomp.compile(model, (inputs[0],), check=False)
    _assert_unchanged(model, before)
    for compiled in (cm, cm2):  # eager runs change the state as eager does; compare outputs
        assert_matches_eager(model, inputs, cm=compiled)
