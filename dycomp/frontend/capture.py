"""Entry point of the frontend: a bound method + example inputs -> DynGraph."""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from dycomp.errors import UnsupportedError
from dycomp.frontend import ops
from dycomp.frontend.dyndims import leaf_dims
from dycomp.frontend.randomness import no_distribution_checks
from dycomp.frontend.tracer import Tracer
from dycomp.frontend.values import TVal
from dycomp.ir.dyngraph import DynGraph, Region
from dycomp.ir.program import Assign, Lit, Return, Var
from dycomp.runtime.hostops import GENERATOR_NAMES

log = logging.getLogger(__name__)


@dataclass
class InputSpec:
    """How call arguments flatten into the host program's parameters."""

    treespec: object
    names: list  # parameter name per leaf
    tensor: list  # per leaf: (dtype, shape) for tensors, else None
    static: list  # per leaf: the static value for non-tensor leaves
    # per leaf: {dim: name} of the dims that vary between calls (`dynamic_dims=`)
    dynamic: list | None = None

    def shape(self, i: int) -> tuple:
        """Leaf `i`'s shape with each dynamic dim as its name (`("batch", 3, 32, 32)`)."""
        dims = self.dynamic[i] if self.dynamic else {}
        return tuple(dims.get(d, s) for d, s in enumerate(self.tensor[i][1]))

    def describe(self) -> str:
        parts = []
        for i, (name, t, s) in enumerate(zip(self.names, self.tensor, self.static)):
            if t is not None:
                parts.append(f"{name}: {str(t[0]).replace('torch.', '')}"
                             f"[{', '.join(map(str, self.shape(i)))}]")
            else:
                parts.append(f"{name}={s!r}")
        return "(" + ", ".join(parts) + ")"


def capture(fn, args: tuple, kwargs: dict,
            dynamic_dims: dict | None = None) -> tuple[DynGraph, InputSpec]:
    """Trace `fn(*args, **kwargs)` into a DynGraph of static regions and a host program.
    `dynamic_dims` ({input: {dim: name}}): those dims are traced as varying (symbolic)."""
    root = getattr(fn, "__self__", None)
    root = root if isinstance(root, nn.Module) else None
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        raise UnsupportedError(f"example inputs do not match {_where(fn)}: {e}") from None
    leaves, spec = tree_flatten((args, kwargs))
    names = _leaf_names(bound, len(leaves))
    dynamic = leaf_dims(dynamic_dims, names, leaves)
    tr = Tracer(root)
    tr.dynamic_inputs = any(dynamic)
    tr.user_state.save((root, args, kwargs))
    tr.user_state.save_function(getattr(fn, "__func__", fn))
    try:
        with tr, torch.no_grad(), no_distribution_checks():
            targs = []
            for leaf, name, dims in zip(leaves, names, dynamic):
                if isinstance(leaf, torch.Tensor):
                    leaf = TVal(leaf.detach().clone(), var=Var(name), sym=set(dims))
                targs.append(leaf)
            a, k = tree_unflatten(targs, spec)
            value = ops.call(fn, *a, **k)
            tr.close()
            tr.emit(Return(tr.host_expr(value), line=_where(fn)))
    finally:
        tr.user_state.restore()
    params = [Var(n) for n, x in zip(names, leaves) if isinstance(x, torch.Tensor)]
    regions = _build_regions(tr)
    if tr.predeclare:
        tr.body.insert(0, Assign(list(tr.predeclare), [Lit(None)] * len(tr.predeclare),
                                 line="loop-carried, first assigned inside a loop"))
    graph = DynGraph(regions, tr.body, params, tr.maybe_undef, getattr(fn, "__name__", "fn"),
                     _where(fn))
    ispec = InputSpec(spec, names,
                      [(x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else None
                       for x in leaves],
                      [None if isinstance(x, torch.Tensor) else x for x in leaves],
                      dynamic if any(dynamic) else None)
    return graph, ispec


def _where(fn) -> str:
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:
        return getattr(fn, "__qualname__", repr(fn))
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"


def _leaf_names(bound, n) -> list[str]:
    names = []
    for pname, value in bound.arguments.items():
        if pname == "self":
            continue
        k = len(tree_flatten(value)[0])
        names += [pname] if k == 1 else [f"{pname}_{i}" for i in range(k)]
    if len(names) != n:  # *args / **kwargs: fall back to positional names
        names = [f"arg{i}" for i in range(n)]
    # names the host program's generator keeps for itself, or that it does not accept
    return ["p" + x if x.startswith("_") else f"{x}_" if x in GENERATOR_NAMES else x
            for x in names]


def _build_regions(tr: Tracer) -> dict[str, Region]:
    regions = {}
    for stmt in _calls(tr.body):
        rb = tr.regions[stmt.region]
        if rb.name in regions:
            continue
        rb.graph.output(tuple(rb.outputs))
        gm = fx.GraphModule(rb.attrs, rb.graph, class_name=f"Region_{rb.name}")
        gm.training = False  # not recursive: exporters restore this mode on shared modules
        regions[rb.name] = Region(rb.name, gm, list(rb.lines))
    return regions


def _calls(body):
    from dycomp.ir.program import CallRegion, walk

    return [s for s in walk(body) if isinstance(s, CallRegion)]
