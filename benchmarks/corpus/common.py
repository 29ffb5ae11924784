"""What every corpus adapter shares: the `Case` it returns, and the compatibility shims.

A corpus adapter (`benchmarks/corpus/<name>.py`) loads a public research repository's
code at run time from a directory the user gives (`run.py --src DIR`; the repository is
expected in `DIR/<Adapter.DIR>`), builds its model with random weights and returns a
`Case`. No repository code is copied into this project. Adapter module contract:

    NAME = "convnet-aig"                        # the name run.py prints
    REPO = "andreasveit/convnet-aig"            # owner/name on GitHub
    COMMIT = "47633cd463f4ac92f05152d825b601f1e8bf09fe"
    DIR = "convnet-aig"                         # folder under --src
    N_INPUTS = 100                              # inputs compared against eager
    def build(src: pathlib.Path) -> Case: ...

Shims for old code (`torch._six`, `np.float`, `.cuda()`, torchvision's pure-Python
parts) live here and are applied by the adapters, never written into the model code.
"""

from __future__ import annotations

import collections.abc
import contextlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class Case:
    """One corpus model, ready to compile.

    `fn`: what `dycomp.compile` gets (an nn.Module, or a bound method / callable).
    `make_input(i)`: the i-th input as `(args, kwargs)`, deterministic in `i`.
    `path_of(out)`: a hashable summary of the control-flow path eager took (exit layer,
      number of ACT steps, expert set, ...), from eager's outputs (or None if the
      adapter records it another way, e.g. through `record_path`).
    `compare(expected, actual)`: None if equal, else a description (default:
      dycomp.check.compare at atol/rtol 1e-4).
    `reseed(i)`: called before each eager and compiled call of input i (models that
      sample at run time and are compared with their randomness fixed).
    `notes`: thresholds, shims and settings, printed by run.py.
    """

    fn: Any
    make_input: Callable[[int], tuple[tuple, dict]]
    path_of: Callable[[Any], Any] = lambda out: None
    compare: Callable[[Any, Any], str | None] | None = None
    reseed: Callable[[int], None] | None = None
    notes: list[str] = field(default_factory=list)


def seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@contextlib.contextmanager
def on_path(*dirs: Path):
    """Put the repository's folders first on sys.path while its modules are imported."""
    added = [str(d) for d in dirs]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)


def repo_dir(src: Path, name: str) -> Path:
    path = Path(src) / name
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: fetch the repository into {src}/{name} "
                                "(see benchmarks/corpus/README.md)")
    return path


def shim_six() -> None:
    """`torch._six` is gone since torch 1.9."""
    sys.modules.setdefault("torch._six", SimpleNamespace(
        container_abcs=collections.abc, string_classes=(str, bytes), int_classes=int,
        inf=math.inf))


def shim_np_float() -> None:
    """`np.float` is gone since numpy 1.24."""
    if not hasattr(np, "float") or np.float is not float:
        np.float = float  # type: ignore[attr-defined]


def _cpu_self(self, *args, **kwargs):
    return self


def shim_cuda() -> None:
    """Hard-coded `.cuda()` calls: tensors and modules stay on the CPU."""
    torch.Tensor.cuda = _cpu_self
    nn.Module.cuda = _cpu_self


def site_dir(src: Path, name: str) -> Path:
    """The side-package folder `SRC/_site/<name>` (installed as the adapter's docstring
    says, `pip install --no-deps --target SRC/_site/<name> ...`)."""
    path = Path(src) / "_site" / name
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: install the side packages as the adapter's "
                                "docstring says")
    return path


_LIBS: list = []  # keeps the torchvision schema library alive


def shim_torchvision(src: Path) -> Path:
    """torchvision 0.28.0's `_C` does not load beside torch +cpu: define the two op
    schemas its meta registrations need, so that its pure-Python parts import. Returns
    the folder holding it (`$DYCOMP_CORPUS_SIDE`, else `SRC/_site/torchvision028`)."""
    if "torchvision" not in sys.modules and not _defined("torchvision::nms"):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBS.append(lib)
    side = os.environ.get("DYCOMP_CORPUS_SIDE")
    return Path(side) if side else site_dir(src, "torchvision028")


def _defined(op: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(op, "")
        return True
    except RuntimeError:
        return False
