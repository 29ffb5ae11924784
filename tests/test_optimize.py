"""Prune, Quantize and dycomp.compare: numerics, structure and contracts.

Tolerances: a pruned model compiled by dycomp matches the *pruned* eager model like any
model (atol/rtol 1e-4, same path: the compile-time differential check). Quantized
models differ from fp32 by design; static int8 keeps every output within 10 % of the fp32
output's range on the conv examples and within 30 % on the tiny random MLP/GRU ones
(output ranges ~0.5), on the inputs where both take the same path; the conv examples
take fp32's path on >= 75 % of 48 inputs (their gates are calibrated at the median of
their scores, so int8 error flips the inputs that sit near a threshold: 77-100 % on an
AVX2 CPU with 7-bit weights).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import dycomp
from dycomp.passes import Prune, Quantize, quantize
from dycomp.passes.prune_alloc import candidates, channels_to_prune, knapsack
from examples.zoo import ZOO

CONV = ["multi_exit", "static_resnet", "gated_resnet", "policy_net"]
SHRINKS = {"multi_exit", "static_resnet", "gated_resnet", "policy_net", "moe", "gated54",
           "gated_mul",
           "nested_if"}  # act and decoder: every channel feeds a GRU or the host


def _structure(cm) -> dict:
    s = cm.graph.stats()
    return {k: s[k] for k in ("regions", "branches", "loops", "returns")}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_pruned_zoo_keeps_structure_and_matches_pruned_eager(name):
    mod = ZOO[name]
    model, ex = mod.make(0)
    pruned = Prune(0.5).apply(model, ex, method=mod.METHOD)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    assert (after < before) == (name in SHRINKS), (before, after)
    assert sum(p.numel() for p in model.parameters()) == before  # original untouched
    # check=True: differential test against the pruned eager model on generated inputs
    cm = dycomp.compile(pruned, ex, method=mod.METHOD, backend="onnx", fuse_branches=False)
    ref = dycomp.compile(model, ex, method=mod.METHOD, backend="torch", check=False)
    assert _structure(cm) == _structure(ref)
    inputs = mod.sample_inputs(10, seed=5)
    with torch.no_grad():  # same path as the pruned eager model on sample inputs too
        for x in inputs:
            assert mod.path_key(pruned, x, cm(*x)) == mod.path_key(pruned, x, pruned(*x))
    c = dycomp.compare(ref, cm, inputs)
    assert 0.0 <= c.path_agreement <= 1.0 and c.n == 10
    assert sum(r["inputs"] for r in c.per_path) == 10


def test_prune_keeps_interface_layers_whole():
    mod = ZOO["multi_exit"]
    model, ex = mod.make(0)
    pruned = Prune(0.5).apply(model, ex)
    assert all(h.fc.out_features == 10 for h in pruned.heads)
    assert pruned.blocks[0].conv1.out_channels == model.blocks[0].conv1.out_channels // 2
    assert set(pruned.dycomp_prune.kept) >= {f"heads.{i}.fc" for i in range(5)}
    gated, ex = ZOO["gated_resnet"].make(0)
    pruned = Prune(0.5).apply(gated, ex)
    gates = [m for n, m in pruned.named_modules() if n.endswith("gate") and
             isinstance(m, nn.Linear)]
    assert all(g.out_features == 1 for g in gates)


class RareBranch(nn.Module):
    """A conv reached only when the input's mean is very large (never on the example)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.common = nn.Conv2d(16, 16, 3, padding=1)
        self.rare = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        if x.mean() > 5.0:
            h = h + torch.relu(self.rare(h))
        else:
            h = h + torch.relu(self.common(h))
        return self.head(h.mean((2, 3)))


def test_prune_is_consistent_on_paths_the_example_never_takes():
    torch.manual_seed(0)
    model, ex = RareBranch().eval(), (torch.randn(1, 3, 8, 8),)
    pruned = Prune(0.5).apply(model, ex)
    assert pruned.rare.in_channels == pruned.rare.out_channels == pruned.stem.out_channels == 8
    rare_input = torch.randn(1, 3, 8, 8) + 10.0
    out = pruned(rare_input)  # runs the rare conv: shapes must agree
    cm = dycomp.compile(pruned, ex, backend="onnx")
    assert torch.allclose(cm(rare_input), out, atol=1e-4, rtol=1e-4)


def test_layer_adaptive_meets_the_budget_with_less_distortion():
    mod = ZOO["static_resnet"]
    model, ex = mod.make(0)
    samples = mod.sample_inputs(4)
    uni = Prune(0.5).apply(model, ex, samples=samples)
    ada = Prune(0.5, allocation="layer_adaptive").apply(model, ex, samples=samples)
    removed = [r.params_before - r.params_after for r in (uni.dycomp_prune, ada.dycomp_prune)]
    assert removed[1] >= 0.9 * removed[0]  # same budget (additive count, +-10 %)
    assert len(set(ada.dycomp_prune.ratios.values())) > 1  # not uniform

    def err(m):
        return sum(float(((m(*x) - model(*x)) ** 2).mean()) for x in samples)
    with torch.no_grad():
        assert err(ada) <= err(uni)


def test_round_to_counts():
    assert [channels_to_prune(n, 0.5, 16) for n in (8, 16, 24, 32, 64)] == [0, 0, 8, 16, 32]
    assert channels_to_prune(64, 0.75, 16) == 48 and channels_to_prune(48, 2 / 3, 16) == 32
    assert channels_to_prune(10, 0.5) == 5 and channels_to_prune(10, 0.99) == 9
    assert candidates(64, 0.5, 16) == [0.0, 0.25, 0.5, 0.75]  # 64, 48, 32, 16 kept
    assert candidates(16, 0.5, 16) == [0.0] and len(candidates(10, 0.5)) == 8


@pytest.mark.parametrize("allocation", ["uniform", "layer_adaptive"])
def test_round_to_keeps_channel_multiples_and_matches_pruned_eager(allocation):
    mod = ZOO["static_resnet"]
    model, ex = mod.make(0)
    samples = mod.sample_inputs(3)
    exact = Prune(0.5, allocation=allocation).apply(model, ex, samples=samples)
    pruned = Prune(0.5, allocation=allocation, round_to=16).apply(model, ex, samples=samples)
    convs = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 16 == 0 for c in convs), convs
    assert any(c % 16 for m in exact.modules() if isinstance(m, nn.Conv2d)
               for c in [m.out_channels])  # without rounding, some are not
    assert "multiples of 16" in pruned.dycomp_prune.summary()
    assert pruned.dycomp_prune.off_block == 0
    removed = [r.params_before - r.params_after for r in (exact.dycomp_prune,
                                                          pruned.dycomp_prune)]
    if allocation == "layer_adaptive":  # the budget is the unrounded one
        assert removed[1] >= removed[0]
    cm = dycomp.compile(pruned, ex, backend="onnx")  # checked against the pruned eager model
    with torch.no_grad():
        for x in samples:
            assert torch.allclose(cm(*x), pruned(*x), atol=1e-4, rtol=1e-4)


def test_prune_report_counts_convolutions_off_the_simd_block(monkeypatch):
    import dycomp.passes.prune as prune

    monkeypatch.setattr(prune, "simd_channels", lambda: 16)
    model, ex = ZOO["static_resnet"].make(0)
    report = Prune(0.5).apply(model, ex).dycomp_prune
    assert report.off_block == 5  # the stem and stage 1: 16 -> 8 channels
    assert "5 pruned conv layers are off the 16-channel block" in report.summary()


def test_knapsack_picks_least_distortion_that_meets_the_budget():
    distortion = {"a": {0.0: 0, 0.5: 1.0, 0.9: 5.0}, "b": {0.0: 0, 0.5: 0.1, 0.9: 0.2}}
    costs = {"a": {0.0: 0, 0.5: 50, 0.9: 90}, "b": {0.0: 0, 0.5: 50, 0.9: 90}}
    assert knapsack(distortion, costs, budget=90) == {"a": 0.0, "b": 0.9}
    assert knapsack(distortion, costs, budget=100) == {"a": 0.5, "b": 0.5}
    assert knapsack(distortion, costs, budget=0) == {"a": 0.0, "b": 0.0}


def test_unstructured_prune_reports_sparsity():
    model, ex = ZOO["static_resnet"].make(0)
    pruned = Prune(0.6, structured=False).apply(model, ex)
    assert pruned.dycomp_prune.params_after == pruned.dycomp_prune.params_before
    assert pruned.dycomp_prune.sparsity == pytest.approx(0.6, abs=0.02)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_static_int8_zoo_keeps_structure_and_stays_close(name):
    mod = ZOO[name]
    model, ex = mod.make(0)
    calib = mod.sample_inputs(16, seed=1)
    # every decision on the host (no If fusion, no speculation), so that "same path"
    # means the same decisions
    q = dycomp.compile(model, ex, method=mod.METHOD, backend="onnx", fuse_branches=False,
                       optimize=False,
                       passes=[Quantize("int8", calibration=calib, only_if_faster=False)])
    ref = dycomp.compile(model, ex, method=mod.METHOD, backend="torch", check=False,
                         optimize=False)
    assert _structure(q) == _structure(ref)
    assert any("quantized" in o for o in q.optimizations)
    if name in CONV:  # the others' random gates sit at their thresholds: any error flips
        assert dycomp.compare(ref, q, mod.sample_inputs(48, seed=7)).path_agreement >= 0.75
    for x in mod.sample_inputs(12, seed=7):
        (a, pa), (b, pb) = ref.run(*x, return_path=True), q.run(*x, return_path=True)
        if pa == pb:
            fa, fb = _first(a), _first(b)
            tol = 0.1 if name in CONV else 0.3  # tiny random MLP/GRU logits: ~0.5 range
            assert float((fa - fb).abs().max()) <= tol * float(fa.max() - fa.min()) + 1e-3


def _first(out) -> torch.Tensor:
    from torch.utils._pytree import tree_flatten

    return next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))


def test_quantize_keeps_decision_nodes_fp32_and_reports_rare_regions():
    mod = ZOO["multi_exit"]
    model, ex = mod.make(0)
    calib = [ex]  # one input: later exits never see a sample
    q = dycomp.compile(model, ex, backend="onnx", fuse_branches=False,
                       passes=[Quantize("int8", calibration=calib, only_if_faster=False)])
    notes = "\n".join(q.optimizations)
    assert "received no calibration input" in notes or "calibrated on only 1" in notes
    path = q.run(*ex, return_path=True)[1]
    first = q.graph.regions[path[0]].onnx
    ops = {n.op_type for n in first.graph.node}
    assert "QuantizeLinear" in ops and "Softmax" in ops  # the confidence stays float


@pytest.mark.parametrize("reduce_range,largest", [(True, 64), (False, 127)])
def test_int8_weights_have_seven_bits_where_eight_saturate(reduce_range, largest):
    """`reduce_range` gives weights 7 bits, |q| <= 64 (the default on CPUs whose int8
    kernels saturate with 8); without it a channel's largest weight is 127."""
    mod = ZOO["static_resnet"]
    model, ex = mod.make(0)
    cfg = Quantize("int8", calibration=mod.sample_inputs(4), only_if_faster=False,
                   reduce_range=reduce_range)
    assert Quantize().seven_bit == quantize.int8_saturates() and cfg.seven_bit == reduce_range
    q = dycomp.compile(model, ex, backend="onnx", passes=[cfg])
    weights = [onnx.numpy_helper.to_array(t) for r in q.graph.regions.values()
               for t in r.onnx.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(int)).max()) for w in weights) == largest


def test_dynamic_and_fp16_run():
    mod = ZOO["gated54"]
    model, ex = mod.make(0)
    for cfg in (Quantize("int8"), Quantize("fp16")):
        q = dycomp.compile(model, ex, backend="onnx", passes=[cfg])
        y = q(*ex)
        assert torch.isfinite(y).all() and y.shape == model(*ex).shape


def test_config_validation_and_backend_errors():
    for bad in (dict(amount=0), dict(amount=1.5), dict(amount=0.5, allocation="greedy"),
                dict(amount=0.5, exclude="heads.*"), dict(amount=0.5, round_to=0),
                dict(amount=0.5, round_to="fast"), dict(amount=0.5, round_to=True),
                dict(amount=0.5, structured=False, round_to=16)):
        with pytest.raises(ValueError):
            Prune(**bad)
    for bad in (dict(dtype="int4"), dict(method="mse"), dict(calibration=[]),
                dict(dtype="fp16", calibration=[(torch.zeros(1),)])):
        with pytest.raises(ValueError):
            Quantize(**bad)
    model, ex = ZOO["static_resnet"].make(0)
    with pytest.raises(dycomp.UnsupportedError, match="backend 'onnx'"):
        dycomp.compile(model, ex, backend="tvm", passes=[Quantize()])


def test_prune_exclude_patterns():
    model, ex = ZOO["static_resnet"].make(0)
    pruned = Prune(0.5, exclude=["conv1", "layer1.*"]).apply(model, ex)
    assert pruned.conv1.out_channels == model.conv1.out_channels
    assert pruned.layer1[0].conv1.out_channels == model.layer1[0].conv1.out_channels
    assert pruned.layer3[0].conv1.out_channels < model.layer3[0].conv1.out_channels


def test_compare_known_cases():
    mod = ZOO["nested_if"]
    model, ex = mod.make(0)
    inputs = mod.sample_inputs(16)
    same = dycomp.compare(model, model, inputs)
    assert same.path_agreement == 1.0 and same.output_max_abs_diff == 0.0
    assert same.output_agreement == 1.0
    other, _ = mod.make(1)  # other weights: some inputs branch differently
    c = dycomp.compare(model, other, inputs)
    ref = dycomp.compile(model, ex, backend="torch", check=False)
    cand = dycomp.compile(other, ex, backend="torch", check=False)
    expected = np.mean([ref.run(*x, return_path=True)[1] == cand.run(*x, return_path=True)[1]
                        for x in inputs])
    assert c.path_agreement == pytest.approx(expected) and c.path_agreement < 1.0
    assert "same path" in c.table()


def test_only_if_faster_keeps_int8_where_it_is_measured_faster():
    mod = ZOO["static_resnet"]
    model, ex = mod.make(0)
    q = dycomp.compile(model, ex, backend="onnx", fuse_branches=False,
                       passes=[Quantize("int8", calibration=mod.sample_inputs(8))])
    kept = [r.onnx for r in q.graph.regions.values()]
    is_int8 = any(n.op_type == "QuantizeLinear" for m in kept for n in m.graph.node)
    assert q.optimizations[0].startswith("quantized")
    assert is_int8 == (q.optimizations[0] == "quantized 1 of 1 subgraphs (static)")


def test_quantizer_failure_leaves_the_subgraph_fp32(monkeypatch):
    import dycomp.passes.quantize as quantize

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(quantize, "_quantize", broken)
    model, ex = ZOO["static_resnet"].make(0)
    q = dycomp.compile(model, ex, backend="onnx", passes=[Quantize("int8", calibration=[ex])])
    assert q.optimizations[0] == "quantized 0 of 1 subgraphs (static)"
    assert any("left fp32: onnxruntime.quantization failed: unsupported op" in o
               for o in q.optimizations)
    assert torch.allclose(q(*ex), model(*ex), atol=1e-4, rtol=1e-4)


def test_unstructured_layer_adaptive_varies_per_layer_at_the_same_sparsity():
    mod = ZOO["static_resnet"]
    model, ex = mod.make(0)
    pruned = Prune(0.5, structured=False, allocation="layer_adaptive").apply(
        model, ex, samples=mod.sample_inputs(2))
    report = pruned.dycomp_prune
    assert len(set(report.ratios.values())) > 1
    assert report.sparsity >= 0.5 - 0.02  # at least uniform's share of zero weights


# -- KeepDecisions -----------------------------------------------------------------------------
class _Decides(nn.Module):
    def forward(self, x):
        if x.sum() > 1.0:  # a comparison: recorded as its margin
            x = x * 2
        if torch.lt(x.mean(), -3.0):
            x = x - 1
        return x, x.max().item()  # a float read: recorded as the value


def test_decision_recorder_reads_margins_in_order():
    from dycomp.passes import DecisionRecorder

    x = torch.full((1, 4), 0.5)
    with DecisionRecorder() as rec:
        _Decides()(x)
    first, second, third = rec.decisions
    assert first.is_margin and first.value.item() == pytest.approx(1.0)  # 2.0 - 1.0
    assert second.is_margin and second.value.item() == pytest.approx(-4.0)  # -(1 - -3)
    assert not third.is_margin and third.value.item() == pytest.approx(1.0)
    assert [d.key() for d in rec.decisions] == [(True,), (False,), None]
    with DecisionRecorder(forced=rec.decisions) as forced:  # teacher forcing
        y, _ = _Decides()(-x)  # would take neither branch on its own
    assert torch.equal(y, -x * 2) and forced.decisions[0].value.item() < 0


def test_decision_recorder_sees_through_hard_gates():
    """BlockDrop's `action = (probs > 0.5).float()`, then `if action[0, i] > 0.5`: the
    gate is a decision (margins `probs - 0.5`), and so is each read of it, with the
    gradient of `probs` (not the constant 0.5 the gate's values would give)."""
    from dycomp.passes import DecisionRecorder

    probs = torch.tensor([[0.7, 0.2, 0.55]], requires_grad=True)
    with DecisionRecorder() as rec:
        action = (probs > 0.5).float()
        ran = [i for i in range(3) if action[0, i] > 0.5]
        skipped = [i for i in range(3) if action[0, i] < 0.5]
    assert ran == [0, 2] and skipped == [1]
    gate, *reads = rec.decisions
    assert gate.is_margin and gate.key() == (True, False, True)
    assert all(d.is_margin for d in reads)
    assert torch.allclose(torch.stack([d.value for d in reads]),
                          torch.tensor([0.2, -0.3, 0.05, -0.2, 0.3, -0.05]), atol=1e-6)
    reads[0].value.backward()
    assert probs.grad.tolist() == [[1.0, 0.0, 0.0]]


def test_decision_recorder_forces_gates_that_are_only_multiplied_in():
    """A gate Python never reads (`x * (p > 0.5).float()`, gated_mul's way) is a
    decision too; forced, the gate takes the other run's values."""
    from dycomp.passes import DecisionRecorder

    def gated(p, x):
        return x * (p > 0.5).float()

    x = torch.ones(1, 3)
    with DecisionRecorder() as ref:
        gated(torch.tensor([[0.9, 0.1, 0.6]]), x)
    with DecisionRecorder(forced=ref.decisions) as copy:
        y = gated(torch.tensor([[0.4, 0.8, 0.7]]), x)  # would be 0, 1, 1
    assert y.tolist() == [[1.0, 0.0, 1.0]]
    assert [d.key() for d in ref.decisions] == [(True, False, True)]
    assert [d.key() for d in copy.decisions] == [(False, True, True)]  # its own margins


def test_keep_decisions_leaves_a_copy_that_decides_alike_alone():
    """policy_net's gates sit within 0.05 of their threshold: a fixed hinge margin pushed
    an unpruned copy off its own decisions (100 % -> 53 %); the reference's own margin
    bounds what is asked."""
    import copy

    from dycomp.passes import KeepDecisions

    mod = ZOO["policy_net"]
    model, _ = mod.make(0)
    twin = copy.deepcopy(model)
    report = KeepDecisions(epochs=1).apply(twin, model, mod.sample_inputs(24, seed=5))
    assert report.agreement_before == report.agreement_after == 1.0
    assert report.decisions == 9  # the policy's gate vector, then each block's read
    static, ex = ZOO["static_resnet"].make(0)
    report = KeepDecisions(epochs=1, max_seconds=1).apply(copy.deepcopy(static), static,
                                                          [ex])
    assert report.decisions == 0 and report.summary().startswith("no decisions seen")


def test_keep_decisions_brings_a_pruned_copy_back_to_the_reference_path():
    """Pruning a random-weight multi-exit network moves its exits; the fine-tune on the
    reference's decision margins brings most of them back (on the inputs it saw)."""
    from dycomp.passes import KeepDecisions

    mod = ZOO["multi_exit"]
    model, ex = mod.make(0)
    pruned = Prune(0.5).apply(model, ex)
    inputs = mod.sample_inputs(48, seed=11)
    report = KeepDecisions(epochs=6).apply(pruned, model, inputs)
    assert report.agreement_after >= report.agreement_before + 0.15, report.summary()
    assert report.steps == 6 * 48 and "decisions kept on" in report.summary()


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(margin=-0.1),
                                 dict(max_seconds=True)])
def test_keep_decisions_validates_its_config(bad):
    from dycomp.passes import KeepDecisions

    with pytest.raises(ValueError, match="KeepDecisions"):
        KeepDecisions(**bad)
