"""Helpers shared by passes that edit regions."""

from __future__ import annotations

from collections import defaultdict

from torch import fx

from dycomp.ir.program import CallRegion, walk


def call_sites(graph) -> dict[str, list[CallRegion]]:
    sites = defaultdict(list)
    for s in walk(graph.body):
        if isinstance(s, CallRegion):
            sites[s.region].append(s)
    return sites


def set_outputs(gm: fx.GraphModule, nodes) -> None:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (tuple(nodes),)


def rebuild(gm_or_graph, owners) -> fx.GraphModule:
    """A GraphModule over `graph` whose attributes come from the modules in `owners`."""
    graph = gm_or_graph
    root = {}
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr"):
            for owner in owners:
                try:
                    root[n.target] = _fetch(owner, n.target)
                    break
                except AttributeError:
                    continue
    graph.lint()
    gm = fx.GraphModule(root, graph)
    gm.training = False  # not recursive: exporters restore this mode on shared modules
    return gm


def _fetch(owner, target):
    obj = owner
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
