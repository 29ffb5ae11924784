"""Carve a region into consecutive pieces, and rewrite a call of it into calls of them.

The dynamic-aware passes move part of a region elsewhere (into a branch arm, before a
loop): they pick which compute nodes go into which piece, and `carve` builds one region
per piece. A piece takes every value it reads from outside (region inputs or values of
earlier pieces) and returns every value a later piece or the region's output reads.
Parameters and constants (`get_attr`) are copied into each piece that reads them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import fx

from dycomp.ir.dyngraph import Region
from dycomp.ir.program import Assign, CallRegion, Var, walk
from dycomp.passes.regions import rebuild

COMPUTE = ("call_function", "call_method", "call_module")


@dataclass
class Piece:
    region: str
    ins: list  # source-graph nodes whose values the piece takes, in order
    outs: list  # source-graph nodes the piece returns, in order


def carvable(region) -> bool:
    """An FX region whose outputs are all graph values (not Python constants)."""
    return (region is not None and region.gm is not None
            and all(isinstance(n, fx.Node) for n in region.output_nodes))


def compute_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op in COMPUTE]


def carve(graph, region: Region, parts: list[set], keep=()) -> list[Piece]:
    """One new region per part (sets of compute nodes; together every compute node of
    `region`, each part reading only earlier parts). Empty parts give no piece (None).
    Nodes in `keep` are returned by their piece even if no other piece reads them."""
    gm = region.gm
    owner = {n: i for i, p in enumerate(parts) for n in p}
    for n in region.output_nodes:  # a constant returned as is goes with the first piece
        if isinstance(n, fx.Node) and n.op == "get_attr":
            owner.setdefault(n, 0)
    order = [n for n in gm.graph.nodes if n in owner]
    pieces = []
    for i in range(len(parts)):
        part = [n for n in order if owner[n] == i]
        if not part:
            pieces.append(None)
            continue
        ins = _unique(x for n in part for x in n.all_input_nodes
                      if x.op == "placeholder" or owner.get(x, i) != i)
        outs = [n for n in part if n in keep
                or any(owner.get(u, len(parts)) > i for u in n.users)]
        pieces.append(Piece(_build(graph, region, part, ins, outs), ins, outs))
    return pieces


def fresh_name(graph) -> str:
    taken = set(graph.regions)
    return next(f"r{i}" for i in itertools.count(len(taken)) if f"r{i}" not in taken)


class Names:
    """Fresh host variable names (`g0`, `g1`, ...) unused anywhere in the program."""

    def __init__(self, graph, prefix: str):
        used = {v.name for s in walk(graph.body) for v in s.uses() + s.defs()}
        used |= {p.name for p in graph.params}
        self._names = (f"{prefix}{i}" for i in itertools.count() if f"{prefix}{i}" not in used)

    def var(self) -> Var:
        return Var(next(self._names))


def call_piece(piece: Piece, env: dict, names: Names, line, named=None) -> CallRegion:
    """The call of `piece`: reads `env[node]`, binds its outputs to the variables in
    `named` (node -> the original call's output variable) or to fresh ones."""
    outs = []
    for n in piece.outs:
        env[n] = (named or {}).pop(n, None) or names.var()
        outs.append(env[n])
    return CallRegion(piece.region, [env[x] for x in piece.ins], outs, line=line)


def output_vars(region: Region, site: CallRegion) -> dict:
    """Output node -> the variable the original call bound it to (first binding; call
    outputs are defined once, so a piece may bind them early)."""
    named = {}
    for v, n in zip(site.outs, region.output_nodes):
        named.setdefault(n, v)
    return named


def bind_outputs(region: Region, site: CallRegion, env: dict, line) -> list:
    """Assignments of the original call's output variables from the carved values."""
    outs = region.output_nodes
    pairs = [(v, env[n]) for v, n in zip(site.outs, outs) if env[n] != v]
    return [Assign([d for d, _ in pairs], [s for _, s in pairs], line=line)] if pairs else []


def _build(graph, region: Region, part: list, ins: list, outs: list) -> str:
    new = fx.Graph()
    env = {}
    for x in ins:
        env[x] = new.placeholder(x.name)
        env[x].meta = {k: v for k, v in x.meta.items() if k in ("example", "sym")}

    def arg(x):
        if x not in env:  # a parameter or constant: copied into every piece that reads it
            env[x] = new.node_copy(x)
        return env[x]

    for n in part:
        env[n] = new.node_copy(n, arg)
    new.output(tuple(env[o] for o in outs))
    name = fresh_name(graph)
    lines = list(dict.fromkeys(n.meta["line"] for n in part if n.meta.get("line")))
    graph.regions[name] = Region(name, rebuild(new, [region.gm]), lines=lines)
    return name


def _unique(items) -> list:
    return list(dict.fromkeys(items))
