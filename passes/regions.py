"""Helpers shared by passes that edit regions."""

from __future__ import annotations

from collections import defaultdict

from torch import fx

from dycomp.ir.program import Assign, CallRegion, Var, walk


def call_sites(graph) -> dict[str, list[CallRegion]]:
    sites = defaultdict(list)
    for s in walk(graph.body):
        if isinstance(s, CallRegion):
            sites[s.region].append(s)
    return sites


def parent_block(body: list, stmt):
    """The statement list (`body` or a block nested in it) that holds `stmt`, or None."""
    if any(s is stmt for s in body):
        return body
    for s in body:
        for b in s.blocks():
            found = parent_block(b, stmt)
            if found is not None:
                return found
    return None


def replace_stmt(root: list, stmt, stmts: list) -> None:
    """Replace `stmt`, wherever it is in `root`, by the statements `stmts`."""
    block = parent_block(root, stmt)
    i = next(i for i, s in enumerate(block) if s is stmt)
    block[i:i + 1] = stmts


def rewrite_body(body: list, fn) -> bool:
    """Depth first: nested blocks first, then `fn(body, i)` for each statement, which
    returns the statements replacing `body[i]` (None: keep it). True if any changed."""
    changed, i = False, 0
    while i < len(body):
        for b in body[i].blocks():
            changed |= rewrite_body(b, fn)
        new = fn(body, i)
        if new is None:
            i += 1
            continue
        body[i:i + 1] = new
        i += len(new)
        changed = True
    return changed


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


def tensor_vars(graph) -> set:
    """Host variables that always hold tensors: entry tensors, region outputs, and phis
    whose every source is one. Phis that feed each other (a loop nested in a loop
    carries `y` in both) count too: each is assumed a tensor until a source says not."""
    tensors = set(graph.params)
    for s in walk(graph.body):
        if isinstance(s, CallRegion):
            tensors |= set(s.outs)
    srcs: dict = {}  # phi -> its sources; None for a variable something else defines
    for s in walk(graph.body):
        for d in s.defs():
            if d in tensors:
                continue
            if not isinstance(s, Assign):
                srcs[d] = None
            elif srcs.get(d, ()) is not None:
                srcs.setdefault(d, []).extend(x for t, x in zip(s.dsts, s.srcs) if t == d)
    phis = {d for d, xs in srcs.items() if xs is not None}
    changed = True
    while changed:
        changed = False
        for d in list(phis):
            if not all(isinstance(x, Var) and (x in tensors or x in phis) for x in srcs[d]):
                phis.discard(d)
                changed = True
    return tensors | phis


def var_examples(graph) -> dict:
    """Example value of every tensor variable a region reads or returns."""
    ex = {}
    for c in [s for s in walk(graph.body) if isinstance(s, CallRegion)]:
        r = graph.regions[c.region]
        if r.gm is None:
            continue
        for v, n in zip(c.args, r.placeholders):
            ex.setdefault(v, n.meta.get("example"))
        for v, n in zip(c.outs, r.output_nodes):
            if isinstance(n, fx.Node):
                ex.setdefault(v, n.meta.get("example"))
    return ex
