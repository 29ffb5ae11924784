"""The example scripts run as documented (quick settings)."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "scale  0.1: exit" in out and "path=r0" in out


def test_deploy_tvm_runs_untuned(tmp_path, capsys):
    ns = runpy.run_path(str(ROOT / "examples" / "deploy_tvm.py"))
    ns["main"](["--out", str(tmp_path / "art.dyc")])
    out = capsys.readouterr().out
    assert "UNTUNED" in out and out.count("max |diff| vs eager") == 3
    assert (tmp_path / "art.dyc" / "manifest.json").is_file()
    diffs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "|diff|" in line]
    assert max(diffs) < 1e-4
