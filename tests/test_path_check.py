"""The path-covering self-check forces every host decision both ways, eager and compiled,
reports arm coverage, and names the arm whose lowered code is wrong."""

from __future__ import annotations

import inspect
import json

import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import dycomp
from dycomp.check_paths import path_check
from dycomp.errors import MismatchError
from examples.zoo import ZOO


class RareArm(nn.Module):
    """The example never takes the `if` arm (the sum would have to pass 1e3)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 1e3:
            h = torch.relu(self.b(h))  # the rare arm
        else:
            h = h - 1.0
        if h.mean() > 0:
            h = h * 3.0
        return self.c(h)


def _line(text: str) -> int:
    lines, start = inspect.getsourcelines(RareArm.forward)
    return start + next(i for i, s in enumerate(lines) if text in s)


def _compile(backend: str, **kw):
    model, x = RareArm().eval(), torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    cm = dycomp.compile(model, (x,), backend=backend, optimize=False, **kw)
    return model, x, cm


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_every_arm_is_checked(backend, tmp_path):
    model, x, cm = _compile(backend)
    report = cm.check
    assert report.full and len(report.arms) == 4, report.summary()
    assert report.forced_runs >= 1 and report.regions_run == report.regions
    assert "4/4 decision arms checked" in cm.explain()
    if backend == "onnx":
        cm.save(tmp_path / "net.dyc")
        check = json.loads((tmp_path / "net.dyc" / "manifest.json").read_text())["check"]
        assert (check["arms"], check["arms_checked"], check["unchecked"]) == (4, 4, {})


def _arm_region(cm) -> str:
    where = f"test_path_check.py:{_line('the rare arm')}"
    return next(n for n, r in cm.graph.regions.items() if where in r.lines)


def test_corrupt_torch_arm_is_named():
    model, x, cm = _compile("torch", check=False)
    gm = cm.executor.modules[_arm_region(cm)]
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        wrong = gm.graph.call_function(torch.add, (out.args[0][0], 1.0))
    out.args = ((wrong, *out.args[0][1:]),)
    gm.recompile()
    with pytest.raises(MismatchError) as e:
        path_check(model.forward, cm, (x,), {})
    assert f"true arm of the decision at test_path_check.py:{_line('1e3')}" in str(e.value)
    assert "values differ" in str(e.value)


def _plus_one(model_bytes: bytes) -> bytes:
    """The model with 1.0 added to its first output."""
    m = onnx.load_from_string(model_bytes)
    name = m.graph.output[0].name
    for n in m.graph.node:
        n.output[:] = [f"{o}_pre" if o == name else o for o in n.output]
    m.graph.initializer.append(numpy_helper.from_array(
        torch.ones(()).numpy(), "dycomp_test_one"))
    m.graph.node.append(helper.make_node("Add", [f"{name}_pre", "dycomp_test_one"], [name]))
    return m.SerializeToString()


def test_corrupt_onnx_arm_is_named():
    from dycomp.runtime.onnx_executor import OnnxExecutor

    model, x, cm = _compile("onnx", check=False, fuse_branches=False)
    models = dict(cm.executor.models)
    arm = _arm_region(cm)
    models[arm] = _plus_one(models[arm])
    cm.program.executor = OnnxExecutor(models)
    with pytest.raises(MismatchError) as e:
        path_check(model.forward, cm, (x,), {})
    assert f"decision at test_path_check.py:{_line('1e3')}" in str(e.value)
    assert "forced decisions: test_path_check.py" in str(e.value)


def test_zoo_multi_exit_every_exit_forced():
    model, example = ZOO["multi_exit"].make()
    cm = dycomp.compile(model, example, backend="onnx")
    assert cm.check.full and len(cm.check.arms) == 10, cm.check.summary()
