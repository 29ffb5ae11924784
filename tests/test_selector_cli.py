"""`dycomp compile --selector NAME=V1,V2,...`: a model with argument selectors compiled
from the command line into one artifact (issue #26)."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from dycomp.cli import main
from dycomp.cli_selectors import parse_selector_flags as parse_selectors

MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn


class Slim(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x, width=1.0):
        c = int(8 * width)
        h = F.relu(F.conv2d(x, self.conv.weight[:c], self.conv.bias[:c], padding=1))
        h = h.mean((2, 3))
        y = F.linear(h, self.fc.weight[:, :c], self.fc.bias)
        if h.mean() > 0.15:  # a data-dependent branch in every sub-network
            return y * 2
        return y


def make():
    torch.manual_seed(0)
    return Slim().eval(), (torch.randn(1, 3, 8, 8),)
'''


def _model_file(tmp_path):
    path = tmp_path / "slim.py"
    path.write_text(MODEL)
    spec = importlib.util.spec_from_file_location("slim_cli_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module.make()[0]


def test_compile_with_selector_then_run_each_width(tmp_path, capsys):
    path, model = _model_file(tmp_path)
    art = tmp_path / "slim.dyc"
    assert main(["compile", f"{path}:make", "--selector", "width=0.5,1.0", "-o",
                 str(art)]) == 0
    summary = capsys.readouterr().out
    assert "width = 0.5, 1.0" in summary and "width=0.5:" in summary
    assert "every sub-network matched eager" in summary
    top = json.loads((art / "manifest.json").read_text())
    assert top["kind"] == "selectors" and len(top["subnets"]) == 2
    assert (art / "weights.bin").is_file()
    g = torch.Generator().manual_seed(1)
    branches = set()
    for i in range(6):
        x = torch.randn(1, 3, 8, 8, generator=g) * (0.5 + i)
        np.save(tmp_path / "x.npy", x.numpy())
        for w in (0.5, 1.0):
            out = tmp_path / "y.npz"
            assert main(["run", str(art), "--input", str(tmp_path / "x.npy"), "--arg",
                         f"width={w}", "--out", str(out)]) == 0
            ref = model(x, width=w)
            np.testing.assert_allclose(np.load(out)["out"], ref.detach().numpy(),
                                       rtol=1e-4, atol=1e-4)
            h = torch.relu(torch.nn.functional.conv2d(
                x, model.conv.weight[:int(8 * w)], model.conv.bias[:int(8 * w)],
                padding=1)).mean()
            branches.add(bool(h > 0.15))
    assert branches == {True, False}  # both arms were compared
    assert main(["run", str(art), "--input", str(tmp_path / "x.npy"), "--arg",
                 "width=0.75"]) == 2  # not declared


def test_values_read_as_json_or_python_literals():
    got = parse_selectors(("width=0.5, 1,true,'a,b',c,null", "depth=2,3"))
    assert got == {"width": [0.5, 1, True, "a,b", "c", None], "depth": [2, 3]}
    assert type(got["width"][1]) is int and type(got["width"][2]) is bool


@pytest.mark.parametrize("flags, match", [
    (["width"], "takes NAME=V1,V2"),
    (["=0.5"], "takes NAME=V1,V2"),
    (["1w=0.5"], "takes NAME=V1,V2"),
    (["width="], "empty value"),
    (["width=0.5,,1.0"], "empty value"),
    (["width=[1, 2]"], "not an int, float, bool, str or None"),
    (["width=0.5,(1, 2)"], "not an int, float, bool, str or None"),
    (["width=NaN"], "not an int, float, bool, str or None"),
    (["width=0.5,0.5"], "declares a value twice"),
    (["width=0.5", "width=1.0"], "given twice"),
])
def test_bad_selector_text_is_a_one_line_usage_error(tmp_path, capsys, flags, match):
    path, _ = _model_file(tmp_path)
    argv = ["compile", f"{path}:make"]
    for f in flags:
        argv += ["--selector", f]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_selector_refuses_flags_that_compile_one_model(tmp_path, capsys):
    path, _ = _model_file(tmp_path)
    assert main(["compile", f"{path}:make", "--selector", "width=0.5,1.0", "--prune",
                 "0.5"]) == 2
    assert "--prune" in capsys.readouterr().err
