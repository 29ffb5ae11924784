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

import contextlib
import copy
import fnmatch
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from dycomp.errors import UnsupportedError
from dycomp.passes.all_paths import AllPaths

log = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "layer_adaptive")
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Prune:
    """Prune `amount` of the channels (structured) or weights (unstructured).

    `exclude`: module names (glob patterns, e.g. ``"heads.*"``) never pruned.
    Use in `dycomp.compile(..., passes=[Prune(0.5)])`, or `Prune(0.5).apply(model, x)` for
    a pruned copy to fine-tune before compiling."""

    amount: float
    structured: bool = True
    allocation: str = "uniform"
    exclude: Sequence[str] = ()
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

    def summary(self) -> str:
        return (f"pruned {self.params_before:,} -> {self.params_after:,} parameters "
                f"({1 - self.params_after / max(self.params_before, 1):.0%} fewer), "
                f"weight sparsity {self.sparsity:.0%}")


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
    report = PruneReport(before, _count(pruned), _sparsity(pruned), ratios, kept)
    log.info("%s", report.summary())
    return pruned, report


def entry(model: nn.Module, method: str):
    fn = getattr(model, method, None)
    if not callable(fn):
        raise UnsupportedError(f"{type(model).__name__} has no method {method!r}",
                               hint="pass method='forward' or the name of a method")
    return fn


def _structured(model, method, args, samples, config):
    import torch_pruning as tp

    from dycomp.frontend.capture import capture
    from dycomp.passes import prune_alloc

    graph, _ = capture(entry(model, method), args, {})
    paths, opaque = AllPaths(graph), _Opaque(model)
    with torch.enable_grad(), opaque:
        paths()  # host-visible values and entry leaves, for what follows
    kept = _host_facing(graph, paths) | opaque.feeders
    leaves = [(p, _channel_dim(p)) for p in [*paths.leaves.values(), *opaque.leaves.values()]
              if isinstance(p, nn.Parameter)]
    with torch.enable_grad(), opaque, _quiet_unwrapped():
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=args, forward_fn=_every_layer(paths),
            unwrapped_parameters=leaves, ignored_layers=list(opaque.modules))
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for m in names if m in kept or _excluded(names[m], config.exclude)]
    groups = lambda: _prunable_groups(dg, ignored)  # noqa: E731 (re-derived after pruning)
    if config.allocation == "uniform":
        ratios = {names[g[0].dep.target.module]: config.amount for g in groups()}
    else:
        ratios = prune_alloc.allocate(entry(model, method), samples, dg, groups(),
                                      config.amount, names)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for group in groups():
        root = group[0].dep
        k = prune_alloc.channels_to_prune(len(group[0].idxs), ratios[names[root.target.module]])
        if k == 0:
            continue
        idxs = torch.argsort(importance(group))[:k].tolist()
        dg.get_pruning_group(root.target.module, root.handler, idxs).prune()
    return ratios, sorted(names[m] for m in kept)


def _prunable_groups(dg, ignored):
    """Channel groups rooted at prunable layers, except those tied to a tensor no layer
    produces (entry arguments, parameters of layers Torch-Pruning does not know, e.g.
    GRUCell): those channels cannot shrink."""
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        if not any(isinstance(d.target.module, nn.Parameter) or
                   isinstance(d.source.module, nn.Parameter) for d, _ in group):
            yield group


KNOWN = PRUNABLE + (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm,
                    nn.GroupNorm, nn.InstanceNorm2d, nn.Embedding, nn.PReLU)


class _Opaque:
    """Layers with weights that Torch-Pruning has no rule for (GRUCell, custom layers).

    While active, each one's output is replaced by a leaf Parameter, cutting the traced
    graph there; `feeders` collects the prunable layers feeding them, which stay whole,
    and groups that touch a leaf are not pruned (`_prunable_groups`)."""

    def __init__(self, model: nn.Module):
        self.modules_of_model = list(model.modules())
        self.modules = [m for m in self.modules_of_model if not isinstance(m, KNOWN)
                        and any(True for _ in m.parameters(recurse=False))]
        self.leaves: dict = {}
        self.feeders: set = set()
        self._producers: dict = {}

    def __enter__(self):
        self._hooks = [m.register_forward_hook(self._record) for m in self._prunable()]
        for m in self.modules:
            self._hooks += [m.register_forward_pre_hook(self._inputs),
                            m.register_forward_hook(self._cut)]

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()

    def _prunable(self):
        return [m for m in self.modules_of_model if isinstance(m, PRUNABLE)]

    def _record(self, module, _, out):
        self._producers[out.grad_fn] = module

    def _inputs(self, module, args):
        self.feeders |= _producers_of([a for a in args if isinstance(a, torch.Tensor)],
                                      self._producers)

    def _cut(self, module, _, out):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        key = (module, tuple(out.shape))
        if key not in self.leaves:
            self.leaves[key] = nn.Parameter(out.detach().clone())
        return self.leaves[key] * 1.0  # a new tensor on each call; the leaf stays untouched


def _producers_of(tensors, producers: dict) -> set:
    """The layers (keys of `producers`: grad_fn -> layer) nearest upstream of tensors."""
    found, seen = set(), set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in producers:
            found.add(producers[fn])
        else:
            stack += [f for f, _ in fn.next_functions]
    return found


def _channel_dim(t: torch.Tensor) -> int:
    """The channel dimension of an activation: 1 for (N, C, ...) images, last otherwise."""
    return 1 if t.dim() in (2, 4, 5) else t.dim() - 1


@contextlib.contextmanager
def _quiet_unwrapped():
    """Torch-Pruning warns about parameters used outside known layers; dycomp leaves the
    groups they touch unpruned (`_prunable_groups`), so the warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        yield


def _every_layer(paths: AllPaths):
    """A forward for the dependency graph: every region's outputs, plus every prunable
    layer's output (a layer that only feeds a decision, e.g. a gate, ends in a comparison
    autograd cannot see through)."""
    def forward(model, _):
        seen = []
        hooks = [m.register_forward_hook(lambda _, __, out: seen.append(out))
                 for m in model.modules() if isinstance(m, PRUNABLE)]
        try:
            return paths() + seen
        finally:
            for h in hooks:
                h.remove()
    return forward


def _host_facing(graph, paths: AllPaths) -> set:
    """Prunable modules whose output channels reach a value the host reads without
    passing through another prunable layer: their shapes are the model's interface.

    Walks each region's FX graph backwards from its host-visible outputs, and across
    regions through the values that fed each input (`paths.sources`)."""
    found, seen = set(), set()
    stack = sorted(paths.host_visible)
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        region = graph.regions[key[0]]
        phs = region.placeholders
        nodes, visited = [region.output_nodes[key[1]]], set()
        while nodes:
            node = nodes.pop()
            if not isinstance(node, fx.Node) or node in visited:
                continue
            visited.add(node)
            if node.op == "call_module" and isinstance(
                    module := region.gm.get_submodule(node.target), PRUNABLE):
                found.add(module)
            elif node.op == "placeholder":
                stack += sorted(paths.sources.get((region.name, phs.index(node)), ()))
            else:
                nodes += node.all_input_nodes
    return found


def _excluded(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _unstructured(model, method, samples, config) -> dict[str, float]:
    from torch.nn.utils import prune as torch_prune

    from dycomp.passes import prune_alloc

    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, PRUNABLE) and not _excluded(n, config.exclude)}
    if config.allocation == "uniform":
        ratios = dict.fromkeys(layers, config.amount)
    else:
        ratios = prune_alloc.allocate_weights(entry(model, method), samples, layers,
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
