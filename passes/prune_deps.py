"""What structured pruning must keep whole, and which channels move together.

`dependency_graph` traces Torch-Pruning's dependency graph over `AllPaths` (every region
of the captured program at once) and finds the layers whose output channels are part of
the model's interface: those feeding values the host reads (`host_facing`) and those
feeding layers Torch-Pruning has no rule for (`_Opaque`).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import fx, nn

from dycomp.passes.all_paths import AllPaths

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def dependency_graph(model: nn.Module, graph, args: tuple):
    """(Torch-Pruning DependencyGraph over all paths, set of layers to keep whole)."""
    import torch_pruning as tp

    paths, opaque = AllPaths(graph), _Opaque(model)
    with torch.enable_grad(), opaque:
        paths()  # host-visible values and entry leaves, for what follows
    kept = host_facing(graph, paths) | opaque.feeders
    leaves = [(p, _channel_dim(p)) for p in [*paths.leaves.values(), *opaque.leaves.values()]
              if isinstance(p, nn.Parameter)]
    with torch.enable_grad(), opaque, _quiet_unwrapped():
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=args, forward_fn=_every_layer(paths),
            unwrapped_parameters=leaves, ignored_layers=list(opaque.modules))
    return dg, kept


def prunable_groups(dg, ignored):
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
    and groups that touch a leaf are not pruned (`prunable_groups`)."""

    def __init__(self, model: nn.Module):
        self.modules = [m for m in model.modules() if not isinstance(m, KNOWN)
                        and any(True for _ in m.parameters(recurse=False))]
        self._layers = [m for m in model.modules() if isinstance(m, PRUNABLE)]
        self.leaves: dict = {}
        self.feeders: set = set()
        self._producers: dict = {}

    def __enter__(self):
        self._hooks = [m.register_forward_hook(self._record) for m in self._layers]
        for m in self.modules:
            self._hooks += [m.register_forward_pre_hook(self._inputs),
                            m.register_forward_hook(self._cut)]

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()

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
    groups they touch unpruned (`prunable_groups`), so the warning is noise."""
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


def host_facing(graph, paths: AllPaths) -> set:
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
