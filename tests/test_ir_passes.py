"""DynGraph checker and views; cleanup passes: contracts, structure, numerics."""

from __future__ import annotations

import copy

import networkx as nx
import pytest
import torch
from torch import nn

from dycomp.backends.torch_backend import TorchExecutor
from dycomp.errors import PassError
from dycomp.frontend.capture import capture
from dycomp.ir.dyngraph import VerifyError
from dycomp.ir.program import Assign, CallRegion, HostOp, Op, Return, Var, walk
from dycomp.passes import (
    DeadValueElimination,
    DedupRegions,
    MergeAdjacentRegions,
    Pass,
    PassResult,
    cleanup_passes,
    run_passes,
)
from dycomp.passes.dead_values import dead_containers
from dycomp.runtime.host import HostProgram
from examples.zoo import ZOO
from tests.helpers import randn_inputs


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        y = self.a(x)
        unused = self.b(x)  # noqa: F841 - dead
        if y.sum() > 0:
            y = self.a(y)
        else:
            y = self.a(y)
        z = y.sum().item()  # noqa: F841 - dead host value
        return self.b(y)


def _run(graph, x):
    prog = HostProgram(graph.host_source(), TorchExecutor(graph))
    return prog.run_path(x.numpy())


def test_capture_verifies_and_prints():
    g, _ = capture(Twice().forward, (torch.randn(1, 8),), {})
    g.verify()
    text = str(g)
    assert "region r0" in text and "if v" in text and "host program" in text
    cfg = g.cfg()
    assert isinstance(cfg, nx.DiGraph)
    kinds = {d["kind"] for _, d in cfg.nodes(data=True)}
    assert {"entry", "CallRegion", "If", "Return"} <= kinds
    assert nx.is_directed_acyclic_graph(cfg)


def test_verify_catches_use_before_def_and_bad_arity():
    g, _ = capture(Twice().forward, (torch.randn(1, 8),), {})
    broken = copy.deepcopy(g)
    call = next(s for s in walk(broken.body) if isinstance(s, CallRegion))
    call.args = [Var("nowhere")]
    with pytest.raises(VerifyError, match="nowhere"):
        broken.verify()
    broken = copy.deepcopy(g)
    call = next(s for s in walk(broken.body) if isinstance(s, CallRegion))
    call.outs = call.outs + [Var("extra")]
    with pytest.raises(VerifyError, match="outs"):
        broken.verify()


@pytest.mark.parametrize("p", [DeadValueElimination(), MergeAdjacentRegions(), DedupRegions()],
                         ids=lambda p: p.name)
def test_each_pass_keeps_numerics_and_reports_modified(p):
    x = torch.randn(1, 8)
    g, _ = capture(Twice().forward, (x,), {})
    before = _run(g, x)[0]
    result = p(g)
    assert isinstance(result, PassResult) and result.graph is g  # declared in-place
    result.graph.verify()
    after = _run(result.graph, x)[0]
    assert torch.allclose(torch.from_numpy(before), torch.from_numpy(after), atol=1e-6)
    again = p(result.graph)
    assert again.modified is False, f"{p.name} must reach a fixpoint"


def test_dead_values_removed():
    g, _ = capture(Twice().forward, (torch.randn(1, 8),), {})
    ops_before = g.stats()["ops"]
    assert DeadValueElimination()(g).modified
    assert g.stats()["ops"] < ops_before
    assert "item()" not in g.host_source()


class Logged(nn.Module):
    """Appends to a list kept on `self` (never returned) and to one it returns."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 8)
        self.log = []

    def forward(self, x):
        self.log, kept = [], []
        for i in range(3):
            x = self.a(x)
            if x.sum() > 0:
                self.log.append(i)
                self.log[-1] = -i
                kept.append(i)
        return x, kept


def test_containers_only_changed_are_dead_with_their_changes():
    g, _ = capture(Logged().forward, (torch.randn(1, 8),), {})
    assert g.host_source().count(".append(") == 4 and "] = -" in g.host_source()
    assert DeadValueElimination()(g).modified
    g.verify()
    source = g.host_source()
    assert source.count(".append(") == 2 and "] = -" not in source  # the returned list's
    for x in randn_inputs((1, 8), 20):
        out, _ = _run(g, x)
        with torch.no_grad():
            assert out[1] == Logged()(x)[1]


def test_a_container_read_inside_another_is_not_dead():
    v, w, u, x = Var("v"), Var("w"), Var("u"), Var("x")
    append = lambda c: HostOp(None, Op(".append", (c, x)), pure=False)  # noqa: E731
    body = [Assign([v, u], [[], []]), append(v), append(u), Assign([w], [[v]]),
            Return((w,))]
    assert dead_containers(body) == {u}


def test_dedup_merges_identical_arms():
    g, _ = capture(Twice().forward, (torch.randn(1, 8),), {})
    run_passes(g, [DeadValueElimination()])
    n = len(g.regions)
    assert DedupRegions()(g).modified
    assert len(g.regions) == n - 1  # the two `self.a(y)` arms are one region


def test_merge_adjacent_regions():
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            n = x.shape[0] + 1  # static: no decision, no split
            y = self.a(x) * n
            return self.a(y)

    g, _ = capture(Split().forward, (torch.randn(1, 4),), {})
    assert len(g.regions) == 1


@pytest.mark.parametrize("name", sorted(ZOO))
def test_cleanup_numerics_on_zoo(name):
    """Numerics before/after the default cleanup passes, same paths (atol 1e-5)."""
    model, example = ZOO[name].make()
    g_raw, _ = capture(model.forward, example, {})
    g_opt, _ = capture(model.forward, example, {})
    run_passes(g_opt, cleanup_passes(), verify=True)
    assert len(g_opt.regions) <= len(g_raw.regions)
    for inputs in ZOO[name].sample_inputs(20):
        args = [t.numpy() for t in inputs]
        a = HostProgram(g_raw.host_source(), TorchExecutor(g_raw)).run(*args)
        b = HostProgram(g_opt.host_source(), TorchExecutor(g_opt)).run(*args)
        _close(a, b)


def _close(a, b):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, dict):
        for k in a:
            _close(a[k], b[k])
    elif hasattr(a, "shape"):
        assert torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-5)
    else:
        assert a == b


class Boom(Pass):
    name = "boom"

    def __call__(self, graph):
        raise RuntimeError("kaput")


def test_pass_failure_names_pass_and_history():
    g, _ = capture(Twice().forward, (torch.randn(1, 8),), {})
    with pytest.raises(PassError, match=r"boom crashed \(after \['dead-values'\]\).*kaput"):
        run_passes(g, [DeadValueElimination(), Boom()])
