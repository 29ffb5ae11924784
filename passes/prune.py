"""Prune: magnitude pruning of a dynamic network, consistent over all of its paths.

Structured pruning removes whole channels, so conv/linear/norm layers shrink and latency
drops. Which layers must lose the *same* channels (residual adds, concatenations,
producers and consumers in different regions, branch arms that re-join) comes from
Torch-Pruning's dependency graph, traced over `AllPaths`: every region of the captured
program, not just the path one example takes, so modules reached only on rare paths are
pruned consistently with the rest. Layers whose outputs the host reads (classifier heads,
gate predicates, returned values) keep their output channels: their shapes are the
model's interface.

Unstructured pruning zeroes the smallest weights of every conv/linear layer (shapes
unchanged; the sparsity is reported). Per-layer amounts: `uniform`, or `layer_adaptive`
(`prune_alloc.allocate`: distortion-minimizing dynamic programming).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dycomp.errors import UnsupportedError
from dycomp.passes import cost
from dycomp.passes.prune_deps import PRUNABLE, dependency_graph, prunable_groups

log = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "layer_adaptive")


@dataclass
class Prune:
    """Prune `amount` of the channels (structured) or weights (unstructured).

    `exclude`: module names (glob patterns, e.g. ``"heads.*"``) never pruned.
    `round_to` (structured): every channel group keeps a multiple of this many channels
    (rounded up), or all of them. ``"auto"``: the CPU's SIMD block (16 with AVX-512, 8
    with AVX2; resolved when the config is made). ONNX Runtime computes convolutions in
    blocks of that many channels, so an 8-channel conv costs what a 16-channel one does
    and a 24-channel one what a 32-channel one does (`benchmarks/conv_widths.py`).
    Use in `dycomp.compile(..., passes=[Prune(0.5)])`, or `Prune(0.5).apply(model, x)` for
    a pruned copy to fine-tune before compiling."""

    amount: float
    structured: bool = True
    allocation: str = "uniform"
    exclude: Sequence[str] = ()
    round_to: int | str = 1
    name = "prune"

    def __post_init__(self):
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)) or not (
                0.0 < self.amount < 1.0):
            raise ValueError(f"Prune(amount={self.amount!r}): amount must be a fraction "
                             "strictly between 0 and 1, e.g. 0.5")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"Prune(allocation={self.allocation!r}): use one of "
                             f"{', '.join(ALLOCATIONS)}")
        if isinstance(self.exclude, str):
            raise ValueError("Prune(exclude=...) takes a list of module names, not a string")
        self.exclude = tuple(self.exclude)
        if self.round_to == "auto":
            self.round_to = simd_channels()
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or (
                self.round_to < 1):
            raise ValueError(f"Prune(round_to={self.round_to!r}): use a channel count >= 1 "
                             "or 'auto'")
        if self.round_to > 1 and not self.structured:
            raise ValueError("Prune(round_to=...) rounds channel counts: it needs "
                             "structured=True")

    def apply(self, model: nn.Module, example_inputs, *, method: str = "forward",
              samples: Sequence[tuple] | None = None) -> nn.Module:
        """A pruned deep copy of `model` (the original is untouched); its `.dycomp_prune`
        attribute holds the `PruneReport`. `samples` (input tuples) drive the
        `layer_adaptive` distortion estimates; default: the example inputs."""
        pruned, report = prune_model(model, example_inputs, self, method=method,
                                     samples=samples)
        pruned.dycomp_prune = report
        return pruned


@dataclass
class PruneReport:
    params_before: int
    params_after: int
    sparsity: float  # fraction of prunable weights that are zero
    ratios: dict[str, float] = field(default_factory=dict)  # unit (layer/group) -> ratio
    kept: list[str] = field(default_factory=list)  # host-visible layers left whole
    round_to: int = 1
    off_block: int = 0  # pruned convolutions whose channel count is not a SIMD multiple

    def summary(self) -> str:
        rounded = f", channels kept in multiples of {self.round_to}" * (self.round_to > 1)
        off = (f"; {self.off_block} pruned conv layers are off the {simd_channels()}-channel "
               f"block ONNX Runtime pads to (round_to='auto', --prune-round-to auto, "
               f"aligns them)") * (self.off_block > 0)
        return (f"pruned {self.params_before:,} -> {self.params_after:,} parameters "
                f"({1 - self.params_after / max(self.params_before, 1):.0%} fewer), "
                f"weight sparsity {self.sparsity:.0%}{rounded}{off}")


def prune_model(model: nn.Module, example_inputs, config: Prune, *, method: str = "forward",
                samples=None) -> tuple[nn.Module, PruneReport]:
    if not isinstance(model, nn.Module):
        raise UnsupportedError(f"Prune needs an nn.Module, got {type(model).__name__}",
                               hint="pass the model itself (method=... names the entry)")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    samples = list(samples or [args])
    pruned = copy.deepcopy(model).eval()
    before = _count(pruned)
    if config.structured:
        ratios, kept = _structured(pruned, method, args, samples, config)
    else:
        ratios, kept = _unstructured(pruned, method, samples, config), []
    flags = dict((n, p.requires_grad) for n, p in model.named_parameters())
    for n, p in pruned.named_parameters():  # pruning makes fresh Parameters
        p.requires_grad_(flags.get(n, True))
    report = PruneReport(before, _count(pruned), _sparsity(pruned), ratios, kept,
                         config.round_to, _off_block(model, pruned))
    log.info("%s", report.summary())
    return pruned, report


def _structured(model, method, args, samples, config):
    import torch_pruning as tp

    from dycomp.api import _resolve
    from dycomp.frontend.capture import capture
    from dycomp.passes import prune_alloc

    entry = _resolve(model, method)
    with torch.no_grad():
        graph, _ = capture(entry, args, {})
    dg, kept = dependency_graph(model, graph, args)
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for m in names if m in kept or _excluded(names[m], config.exclude)]

    def groups():  # derived afresh: each pruning step changes the graph
        return prunable_groups(dg, ignored)

    if config.allocation == "uniform":
        ratios = {names[g[0].dep.target.module]: config.amount for g in groups()}
    else:
        ratios = prune_alloc.allocate(entry, samples, dg, groups(), config.amount, names,
                                      config.round_to)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for group in groups():
        root = group[0].dep
        k = prune_alloc.channels_to_prune(len(group[0].idxs), ratios[names[root.target.module]],
                                          config.round_to)
        if k == 0:
            continue
        idxs = torch.argsort(importance(group))[:k].tolist()
        dg.get_pruning_group(root.target.module, root.handler, idxs).prune()
    return ratios, sorted(names[m] for m in kept)


@functools.cache
def simd_channels() -> int:
    """Channels per SIMD register on this CPU (fp32): ONNX Runtime's NCHWc block."""
    cpu = cost.cpu_features()
    return 16 if cpu.get("AVX512F") else 8 if cpu.get("AVX2") else 4


def _off_block(model: nn.Module, pruned: nn.Module) -> int:
    """Convolutions pruning shrank to a channel count that is not a multiple of the SIMD
    block (`benchmarks/conv_widths.py`: they cost what the next multiple does)."""
    widths = {name: m.out_channels for name, m in model.named_modules()
              if isinstance(m, nn.Conv2d)}
    return sum(1 for name, m in pruned.named_modules() if isinstance(m, nn.Conv2d)
               and m.out_channels != widths.get(name) and m.out_channels % simd_channels())


def _excluded(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _unstructured(model, method, samples, config) -> dict[str, float]:
    from torch.nn.utils import prune as torch_prune

    from dycomp.api import _resolve
    from dycomp.passes import prune_alloc

    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, PRUNABLE) and not _excluded(n, config.exclude)}
    if config.allocation == "uniform":
        ratios = dict.fromkeys(layers, config.amount)
    else:
        ratios = prune_alloc.allocate_weights(_resolve(model, method), samples, layers,
                                              config.amount)
    for name, m in layers.items():
        if ratios[name] > 0:
            torch_prune.l1_unstructured(m, "weight", amount=ratios[name])
            torch_prune.remove(m, "weight")
    return ratios


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sparsity(model: nn.Module) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)
