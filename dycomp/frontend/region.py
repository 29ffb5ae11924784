"""A region under construction: an FX graph of tensor ops with no decision inside."""

from __future__ import annotations

import torch
from torch import fx

from dycomp.ir.program import CallRegion, Var


class RegionBuilder:
    def __init__(self, name: str, modules: dict):
        self.name = name
        self.graph = fx.Graph()
        self.attrs: dict[str, object] = {}  # target name -> module / tensor (GraphModule root)
        self.modules = modules  # id(obj) -> qualified name in the user's model
        self.inputs: list[Var] = []
        self.placeholders: dict[Var, fx.Node] = {}
        self.outputs: list[fx.Node] = []
        self.out_vars: list[Var] = []
        self.node_var: dict[fx.Node, Var] = {}
        self.stmt: CallRegion | None = None
        self.lines: list[str] = []

    def placeholder(self, var: Var, example, sym=()) -> fx.Node:
        """Input of the region; `sym`: dims whose size changes between calls (loops)."""
        node = self.placeholders.get(var)
        if node is None:
            node = self.graph.placeholder(var.name)
            node.meta["example"] = example
            node.meta["sym"] = sorted(sym)
            self.placeholders[var] = node
            self.inputs.append(var)
        return node

    def attr(self, obj) -> str:
        """Target name of a module, parameter or constant tensor used by the region."""
        name = self.modules.get(id(obj))
        if name is None:
            name = f"_const{len(self.modules)}"
            self.modules[id(obj)] = name
        self.attrs[name] = obj
        return name

    def get_attr(self, tensor: torch.Tensor) -> fx.Node:
        node = self.graph.get_attr(self.attr(tensor))
        node.meta["example"] = tensor.detach()
        return node

    def add_output(self, node: fx.Node, var: Var):
        self.outputs.append(node)
        self.out_vars.append(var)
        self.node_var[node] = var
        if self.stmt is not None:
            self.stmt.outs.append(var)
