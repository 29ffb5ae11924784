"""DedupRegions: structurally identical regions (same ops on the same weights, e.g. one
module applied at every iteration of an unrolled loop) are compiled once."""

from __future__ import annotations

from torch import fx

from dycomp.passes.base import Pass, PassResult
from dycomp.passes.regions import call_sites


class DedupRegions(Pass):
    name = "dedup-regions"

    def __call__(self, graph) -> PassResult:
        canon: dict = {}
        rename = {}
        for name, region in graph.regions.items():
            key = region_key(region.gm)
            if key in canon:
                rename[name] = canon[key]
            else:
                canon[key] = name
        for name, sites in call_sites(graph).items():
            for s in sites:
                s.region = rename.get(name, name)
        for name in rename:
            del graph.regions[name]
        return PassResult(graph, bool(rename))


def region_key(gm: fx.GraphModule) -> str:
    index = {}
    items = []
    for i, n in enumerate(gm.graph.nodes):
        index[n] = i

        def ref(x):
            return f"%{index[x]}"

        args = fx.node.map_arg(n.args, ref)
        kwargs = fx.node.map_arg(n.kwargs, ref)
        items.append((n.op, node_target(gm, n), repr(args), repr(kwargs), _input_type(n)))
    return repr(items)


def _input_type(n: fx.Node) -> str:
    """A region input's dtype and static shape: regions that differ only there (one block
    applied at every iteration of an unrolled loop to features of other sizes) are
    compiled per shape, since backends specialize to it."""
    ex = n.meta.get("example") if n.op == "placeholder" else None
    if not hasattr(ex, "shape"):
        return ""
    sym = set(n.meta.get("sym", ()))
    shape = tuple(None if i in sym else s for i, s in enumerate(ex.shape))
    return f"{ex.dtype}{shape}"


def node_target(gm, n) -> str:
    """What a node computes with: the op, or the identity of the module/parameter."""
    if n.op == "placeholder":
        return ""
    if n.op in ("call_module", "get_attr"):
        obj = gm
        for p in n.target.split("."):
            obj = getattr(obj, p)
        return f"{n.target}@{id(obj)}"
    if n.op == "call_function":
        t = n.target
        return f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', repr(t))}"
    return str(n.target)
