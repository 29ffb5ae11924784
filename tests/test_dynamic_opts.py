"""The dynamic-aware passes: GateToBranch, HoistLoopInvariants, FuseAcrossDecisions.

Three layers per pass: structure (it fires where it should, not where it must not),
numerics against eager PyTorch on inputs covering every path, and the report."""

from __future__ import annotations

import pytest
import torch

import dycomp
from dycomp.cli import main
from dycomp.ir.program import If, Loop, walk
from dycomp.passes import DYNAMIC_PASSES
from tests import dyn_models as dm
from tests.helpers import assert_matches_eager, randn_inputs

BACKENDS = ["torch", "onnx"]


def _seeded(cls, *args, **kw):
    torch.manual_seed(0)
    return cls(*args, **kw).eval()


def _applied(cm, name):
    return [o for o in cm.optimizations if o.startswith(name)]


def _image_inputs(n=24):
    return [(x,) for x in randn_inputs((1, 16, 8, 8), n)]


# -- GateToBranch ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["blend", "flipped", "where", "residual", "ste"])
def test_gate_to_branch_skips_gated_blocks(form, backend):
    model = _seeded(dm.GatedNet, (form,) * 3)
    cm, paths = assert_matches_eager(model, _image_inputs(), backend=backend, fuse_branches=False)
    assert len(_applied(cm, "gate-to-branch")) == 3
    assert cm.graph.stats()["branches"] == 3
    # the gated blocks run only when their gate is on: paths differ in length
    assert len({len(p) for p in paths}) > 1, paths


@pytest.mark.parametrize("form", ["soft", "shared"])
def test_gate_to_branch_leaves_non_gates_alone(form):
    """A sigmoid is not a 0/1 gate; a block whose output is read elsewhere cannot be
    skipped."""
    model = _seeded(dm.GatedNet, (form,) * 2)
    cm, _ = assert_matches_eager(model, _image_inputs(8))
    assert not _applied(cm, "gate-to-branch")
    assert cm.graph.stats()["branches"] == 0


def test_gate_to_branch_cost_rule_keeps_tiny_blocks():
    """A block cheaper than a host dispatch stays arithmetic."""
    model = _seeded(dm.GatedNet, ("blend",), c=1)
    cm = dycomp.compile(model, (torch.randn(1, 1, 2, 2),))
    assert not _applied(cm, "gate-to-branch")


def test_gate_to_branch_is_exact_on_mixed_batches():
    """In a batch where some gates are on, the original arithmetic runs."""
    model = _seeded(dm.GatedNet, ("blend", "where", "residual"))
    batches = [(x,) for x in randn_inputs((4, 16, 8, 8), 12)]
    cm, _ = assert_matches_eager(model, batches)
    assert len(_applied(cm, "gate-to-branch")) == 3


def test_gate_to_branch_can_be_turned_off():
    model = _seeded(dm.GatedNet)
    x = _image_inputs(1)[0]
    assert dycomp.compile(model, x, optimize=False).graph.stats()["branches"] == 0
    only = dycomp.compile(model, x, optimize=["hoist-loop-invariants"])
    assert only.graph.stats()["branches"] == 0
    with pytest.raises(dycomp.UnsupportedError, match="unknown optimization"):
        dycomp.compile(model, x, optimize=["gate-to-brunch"])


# -- HoistLoopInvariants -----------------------------------------------------------------
def _loop_modules(cm) -> set:
    """Modules called by the regions the host calls inside a loop."""
    inside = {s.region for loop in walk(cm.graph.body) if isinstance(loop, Loop)
              for s in walk(loop.body) if hasattr(s, "region")}
    return {n.target for r in inside for n in cm.graph.regions[r].gm.graph.nodes
            if n.op == "call_module"} | {
        n.args[1].target for r in inside for n in cm.graph.regions[r].gm.graph.nodes
        if n.op == "call_function" and len(n.args) > 1 and getattr(n.args[1], "op", "")
        == "get_attr"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_hoist_moves_attention_projections_out_of_the_loop(backend):
    model = _seeded(dm.AttnDecoder)
    inputs = [(x,) for x in randn_inputs((1, 7, 8), 30)]
    cm, paths = assert_matches_eager(model, inputs, backend=backend)
    assert len(_applied(cm, "hoist-loop-invariants")) == 1
    if backend == "torch":
        inside = _loop_modules(cm)
        assert not any(t.startswith(("key", "value")) for t in inside), inside
        assert any(t.startswith("query") for t in inside), inside
    else:  # the decode loop runs in one ONNX Loop
        assert cm.graph.stats()["loops"] == 0 and cm.graph.stats()["region_calls"] == 1
    assert len({len(p) for p in paths}) > 2  # several decode lengths covered


@pytest.mark.parametrize("mutate", ["inplace", "assign"])
def test_hoist_leaves_values_the_loop_changes(mutate):
    model = _seeded(dm.AttnDecoder, mutate=mutate)
    inputs = [(x,) for x in randn_inputs((1, 7, 8), 10)]
    cm, _ = assert_matches_eager(model, inputs)
    assert not _applied(cm, "hoist-loop-invariants")
    assert {"key", "value"} <= {t.split(".")[0] for t in _loop_modules(cm)}


# -- FuseAcrossDecisions -----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_common_work_of_both_arms_moves_before_the_decision(backend):
    model = _seeded(dm.CommonStart)
    cm, paths = assert_matches_eager(model, [(x,) for x in randn_inputs((1, 16), 20)],
                                     backend=backend, fuse_branches=False)
    assert len(_applied(cm, "fuse-across-decisions")) == 1
    assert len({tuple(p) for p in paths}) == 2  # both arms covered
    if backend == "torch":
        ifs = [s for s in walk(cm.graph.body) if isinstance(s, If)]
        arm_regions = {s.region for i in ifs for s in walk(i.then + i.orelse)
                       if hasattr(s, "region")}
        arm_modules = {n.target for r in arm_regions
                       for n in cm.graph.regions[r].gm.graph.nodes if n.op == "call_module"}
        assert "shared" not in arm_modules


@pytest.mark.parametrize("backend", BACKENDS)
def test_cheap_arms_are_speculated_and_selected(backend):
    model = _seeded(dm.CheapArms)
    inputs = [(x,) for x in randn_inputs((1, 16), 20)]
    cm, paths = assert_matches_eager(model, inputs, backend=backend, fuse_branches=False)
    assert len(_applied(cm, "fuse-across-decisions")) == 1
    assert cm.graph.stats()["regions"] == 1  # one dispatch; the branch id stays a host if
    ids = {cm(*x)[1] for x in inputs}
    assert ids == {0, 1}


@pytest.mark.parametrize("cls", [dm.HeavyArms, dm.BreakLoop])
def test_no_speculation_of_heavy_arms_or_breaks(cls):
    model = _seeded(cls)
    shape = (1, 3, 8, 8) if cls is dm.HeavyArms else (1, 16)
    cm, _ = assert_matches_eager(model, [(x,) for x in randn_inputs(shape, 10)])
    assert not _applied(cm, "fuse-across-decisions")
    assert cm.graph.stats()["branches"] == 1


# -- TensorConditions (backend lowering, ONNX) ----------------------------------------------
def test_moe_switch_becomes_one_subgraph():
    """The experts switch on `int(argmax.item())` is decided on the tensor, so the ONNX
    backend fuses the whole network; the index still comes back as a Python int."""
    from examples.zoo import ZOO

    mod = ZOO["moe"]
    model, ex = mod.make()
    cm = dycomp.compile(model, ex, backend="onnx")
    assert cm.graph.stats()["region_calls"] == 1
    assert _applied(cm, "tensor-conditions")
    unfused = dycomp.compile(model, ex, backend="onnx", fuse_branches=False)
    assert not _applied(unfused, "tensor-conditions")


def test_decisions_on_read_scalars_move_into_regions_and_truncated_ones_stay():
    model = _seeded(dm.IndexSwitch)
    inputs = [(x,) for x in randn_inputs((1, 16), 40)]
    cm, _ = assert_matches_eager(model, inputs, backend="onnx")
    assert len(_applied(cm, "tensor-conditions")) == 3  # idx == 2, idx > 5, max > 0.5
    assert "> 0.5)" not in cm.host_source  # compared in float32 against a rounded 0.5
    assert "< 0)" in cm.host_source  # int(float) truncates: stays on the host
    with torch.no_grad():  # both sides of each float decision are covered
        assert {(model.a(*x).max().item() > 0.5, int(model.a(*x).min().item()) < 0)
                for x in inputs} >= {(True, True), (False, False)}
    assert {type(cm(*x)[1]) for x in inputs} == {int}
    idx = {cm(*x)[1] for x in inputs}
    assert 2 in idx and any(i > 5 for i in idx) and any(i not in (2, 6, 7) for i in idx)


# -- reports -------------------------------------------------------------------------------
def test_explain_lists_every_optimization_with_its_source_line():
    model = _seeded(dm.GatedNet)
    cm = dycomp.compile(model, _image_inputs(1)[0])
    text = cm.explain()
    assert text.count("gate-to-branch at dyn_models.py:") == 3
    assert "saved per call with the gate off" in text


def test_cli_explain_opts_and_no_opt(tmp_path, capsys):
    target = f"{dm.__file__}:GatedNet"
    assert main(["compile", target, "--input", "1x16x8x8", "--explain-opts"]) == 0
    out = capsys.readouterr().out
    assert out.count("gate-to-branch") >= 3 and "dyn_models.py:" in out
    assert main(["compile", target, "--input", "1x16x8x8", "--no-opt", "gate-to-branch",
                 "--explain-opts"]) == 0
    assert "no dynamic-aware optimization applied" in capsys.readouterr().out
    assert main(["compile", target, "--input", "1x16x8x8", "--backend", "onnx"]) == 0
    assert "3 branches (3 fused into f1); 3 ONNX If nodes" in capsys.readouterr().out
    assert main(["compile", target, "--input", "1x16x8x8", "--no-opt", "nope"]) == 2
    assert "unknown optimization" in capsys.readouterr().err


def test_every_dynamic_pass_is_listed():
    assert list(DYNAMIC_PASSES) == ["gate-to-branch", "hoist-loop-invariants",
                                    "fuse-across-decisions"]


# -- the pieces the passes share -----------------------------------------------------------
def test_cost_model_counts_conv_and_linear_flops():
    from dycomp.passes import cost

    model = _seeded(dm.GatedNet, ("blend",))
    cm = dycomp.compile(model, _image_inputs(1)[0], optimize=False)
    (region,) = cm.graph.regions.values()
    flops = {n.target: cost.node_flops(region.gm, n) for n in region.gm.graph.nodes
             if n.op == "call_module"}
    assert flops["blocks.0.conv"] == 2 * 16 * 8 * 8 * 16 * 9  # out elements x (cin k k) x 2
    assert flops["blocks.0.gate"] == 2 * 1 * 16
    assert cost.region_us(region) > cost.DISPATCH_US  # the block is worth a branch


def test_carve_splits_a_region_into_pieces_that_compose():
    from dycomp.passes.carve import carve, compute_nodes

    model = _seeded(dm.GatedNet, ("blend",))
    x = _image_inputs(1)[0][0]
    cm = dycomp.compile(model, (x,), optimize=False)
    (region,) = cm.graph.regions.values()
    nodes = compute_nodes(region.gm)
    half = set(nodes[: len(nodes) // 2])
    first, second = carve(cm.graph, region, [half, set(nodes) - half])
    env = {region.placeholders[0]: x}
    for piece in (first, second):
        outs = cm.graph.regions[piece.region].gm(*(env[n] for n in piece.ins))
        env.update(zip(piece.outs, outs))
    (expected,) = region.gm(x)
    assert torch.equal(env[region.output_nodes[0]], expected)


def test_branch_ids_and_flags_fuse_and_come_back_as_python_values():
    """nested_if chooses a branch id (int) and a flag (bool) in its branches and feeds a
    float read with `.item()` back into a region: all of it runs as one ONNX call."""
    from examples.zoo import ZOO

    mod = ZOO["nested_if"]
    model, ex = mod.make()
    cm = dycomp.compile(model, ex, backend="onnx")
    assert cm.graph.stats()["region_calls"] == 1
    for x in mod.sample_inputs(40):
        out = cm(*x)
        assert type(out["branch"]) is int and type(out["normalized"]) is bool
        assert type(out["score"]) is float and type(out["n_active"]) is int
