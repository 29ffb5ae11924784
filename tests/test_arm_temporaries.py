"""A name an `if` arm assigns and nothing after the `if` reads stays local to the arm
(`dycomp/frontend/liveness.py`).

Before, a temporary first assigned inside a data-dependent arm within a loop
(`if gate > 0: h = blk(x); x = x + h`) was joined with the other arm, where it is
undefined; the next iteration's join then copied it where it was never assigned and
compilation failed with an internal `VerifyError`. Each model here runs every arm on
the inputs and must match eager on both backends; the `continue` / `break` models
check that a value an arm leaves the loop with is still joined.
"""

from __future__ import annotations

import ast
import textwrap

import pytest
import torch
from torch import nn

from dycomp.frontend.liveness import live_names
from tests.helpers import assert_matches_eager, randn_inputs


class GatedTemp(nn.Module):
    """A gated residual block with a temporary, in a loop over blocks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    def forward(self, x):
        for blk in self.blocks:
            if x.sum() > 0.0:
                h = blk(x)
                x = x + h
        return x


class CounterInArm(nn.Module):
    """A counter first set in an arm, driving a data-dependent `while` there."""

    def forward(self, x):
        for _i in range(3):
            if x.sum() > 0.0:
                w = 0
                while float(x.norm()) < 3.0 and w < 4:
                    w += 1
                    x = x + 1.0
        return x


class HostLoopTemp(nn.Module):
    """The same inside a `while` over a Python counter, with a Python float temporary."""

    def forward(self, x):
        i = 0
        while i < 3:
            i += 1
            if x.sum() > 0.0:
                g = float(x.mean())
                x = x * 0.5 + g
        return x


class ContinueWithValue(nn.Module):
    """An arm assigns `z` and continues: the loop's next iteration reads it."""

    def forward(self, x):
        z = x * 0.5
        for _i in range(3):
            if x.sum() > 0.0:
                if x.max() > 0.3:
                    z = torch.tanh(z + x)
                    continue
                z = x * -0.5
            x = x - 0.25
        return x, z


class BreakWithValue(nn.Module):
    """An arm assigns `t` and breaks: the code after the loop reads it."""

    def forward(self, x):
        t = x
        for _i in range(4):
            if x.sum() > 0.0:
                t = x * 2.0
                break
            x = x + 0.5
        return x + t


MODELS = [GatedTemp, CounterInArm, HostLoopTemp, ContinueWithValue, BreakWithValue]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_matches_eager(model, backend):
    m = model().eval()
    xs = randn_inputs((1, 8), 24, seed=3, scales=(0.2, 1.0, 3.0, -1.0))
    assert {bool(x.sum() > 0) for x in xs} == {True, False}  # both arms at the first `if`
    assert_matches_eager(m, xs, backend=backend)


def _live(src: str) -> dict | None:
    fdef = ast.parse(textwrap.dedent(src)).body[0]
    return live_names(fdef)


def test_temporary_is_not_live_after_its_if():
    live = _live("""
        def f(x, blocks):
            for blk in blocks:
                if x.sum() > 0:
                    h = blk(x)
                    x = x + h
            return x
    """)
    (names,) = live.values()
    assert "x" in names and "h" not in names


def test_continue_keeps_what_the_loop_reads_next():
    live = _live("""
        def f(x, z):
            for i in range(3):
                if x.sum() > 0:
                    z = x + 1
                    continue
                z = x
            return z
    """)
    (names,) = live.values()
    assert "z" in names


def test_unmodelled_functions_keep_everything():
    assert _live("""
        def f(x):
            try:
                y = x
            except ValueError:
                y = None
            return y
    """) is None
    assert _live("""
        def f(x):
            if x:
                y = 1
            return locals()
    """) is None


def test_names_read_by_a_nested_function_stay_live():
    live = _live("""
        def f(x):
            if x.sum() > 0:
                k = 2
            g = lambda v: v * k
            return x
    """)
    (names,) = live.values()
    assert "k" in names
