"""The host operator table (`runtime/hostops.py`): what the compiler emits, prints and
lowers is a fixed set of named operators, and the Python is the runtime generator's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import dycomp
from dycomp.errors import UnsupportedError
from dycomp.ir.program import HostOp, Lit, Op, Var, emit_python, program_data
from dycomp.runtime.hostcode import generate
from dycomp.runtime.hostcomp import CompError, comprehension_source
from dycomp.runtime.hostops import OPS, render_op


class HostComprehension(nn.Module):
    """A comprehension that branches on data runs on the host as written."""

    def forward(self, x):
        vals = x[0].tolist()
        pos = [v * 2 for v in vals if v > 0]
        return x * len(pos), sum(pos)


class SavesFromHost(nn.Module):
    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def forward(self, x):
        np.save(self.path, x[0].tolist())
        return x


@pytest.mark.parametrize("name, args, text", [
    ("add", ["a", "1"], "(a + 1)"), ("ne", ["a", "b"], "(a != b)"), ("not", ["c"], "(not c)"),
    ("none_of", ["f1", "f2"], "(not (f1 or f2))"), ("eq", ["i", "3"], "(i == 3)"),
    ("shape", ["t", "1"], "t.shape[1]"), ("int_item", ["t"], "int(t.item())"),
    ("range", ["0", "n"], "range(0, n)"), (".append", ["l", "v"], "l.append(v)"),
    ("math.sqrt", ["x"], "math.sqrt(x)"), ("np.stack", ["l", "0"], "np.stack(l, axis=0)"),
    ("setitem", ["d", "'k'", "v"], "d['k'] = v"),
])
def test_operators_print_the_python_they_stand_for(name, args, text):
    assert render_op(name, args) == text


def test_an_unknown_operator_is_no_op():
    with pytest.raises(KeyError):
        Op("({0} + {1})", (Var("a"), Lit(1)))
    assert "exec" not in OPS and "eval" not in OPS and not any("__" in n for n in OPS
                                                               if n != "delitem")


def test_emitted_python_is_the_generator_output_of_the_data():
    body = [HostOp(Var("v1"), Op("lt", (Var("x"), Lit(float("inf")))), line="m.py:3")]
    source = emit_python(body, [Var("x")])
    assert source == generate(program_data(body, [Var("x")]))
    assert "v1 = (x < float('inf'))  # m.py:3" in source


def test_host_comprehension_round_trips_through_an_artifact(tmp_path):
    model = HostComprehension()
    cm = dycomp.compile(model, (torch.tensor([[1.0, -2.0, 3.0, 0.5]]),), backend="onnx",
                        check=False)
    assert "(lambda vals: [v * 2 for v in vals if v > 0])" in cm.host_source
    rt = dycomp.runtime.load(cm.save(tmp_path / "comp.dyc"))
    for seed in range(5):
        x = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 4)).astype(
            np.float32))
        want = model(x)
        got = rt(x.numpy())
        np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-4, atol=1e-4)
        assert got[1] == pytest.approx(want[1], rel=1e-5)


@pytest.mark.parametrize("source", [
    "[x.__class__ for x in a]", "[open(x) for x in a]", "[getattr(x, 'y') for x in a]",
    "[x for x in a.__dict__]", "[(lambda: 0)() for x in a]", "[os.system(x) for x in a]",
    "a + 1", "[x for x in a] if True else 0", "[np.load(x) for x in a]",
])
def test_comprehension_sources_outside_the_language_are_refused(source):
    with pytest.raises(CompError):
        comprehension_source(["a"], source)


def test_comprehension_source_is_reprinted_from_the_checked_tree():
    assert comprehension_source(["a", "k"], "[math.sqrt(x)+k for x in a if x>0]") == \
        "[math.sqrt(x) + k for x in a if x > 0]"


def test_a_numpy_function_outside_the_table_is_unsupported_at_compile(tmp_path):
    path = tmp_path / "written.npy"
    with pytest.raises(UnsupportedError, match="np.save"):
        dycomp.compile(SavesFromHost(path), (torch.ones(1, 4),), check=False)
    assert not path.exists()
