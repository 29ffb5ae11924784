"""Constructs of Hugging Face transformers' sparse MoE blocks (Mixtral, Qwen2-MoE, OLMoE,
DeepSeek-V3: a loop over the experts hit, `for expert_idx in mask.nonzero()`;
Switch Transformers: a `ModuleDict` of experts chosen by `self[f"expert_{idx[0]}"]`),
written as small models of our own. Compared with eager PyTorch on inputs routing the
tokens differently (one expert, ties, NaN), backends torch and onnx; the constructs dycomp
cannot compile faithfully raise UnsupportedError; capture leaves the user's dicts as they
were (transformers' `ACT2FN` computes its items)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import dycomp
from tests.helpers import assert_matches_eager, randn_inputs

BACKENDS = ["torch", "onnx"]
HIDDEN, EXPERTS = 8, 4


class HitLoopExperts(nn.Module):
    """Top-2 routing, then a loop over the experts that received tokens (the number of
    iterations depends on the data), a sentinel expert skipped with `continue`,
    `torch.where` of the expert's mask, `index_add_` into the output."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(HIDDEN, EXPERTS, bias=False)
        self.gate_up = nn.Parameter(torch.randn(EXPERTS, 2 * HIDDEN, HIDDEN) * 0.3)
        self.down = nn.Parameter(torch.randn(EXPERTS, HIDDEN, HIDDEN) * 0.3)

    def forward(self, x):
        b, s, h = x.shape
        x = x.view(-1, h)
        probs = torch.softmax(self.router(x), dim=-1)
        weights, index = torch.topk(probs, 2, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        mask = nn.functional.one_hot(index, num_classes=EXPERTS + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit:
            e = e[0]
            if e == EXPERTS:
                continue
            pos, tok = torch.where(mask[e])
            gate, up = nn.functional.linear(x[tok], self.gate_up[e]).chunk(2, dim=-1)
            y = nn.functional.linear(nn.functional.silu(gate) * up, self.down[e])
            out.index_add_(0, tok, y * weights[tok, pos, None])
        return out.reshape(b, s, h)


class NamedExperts(nn.ModuleDict):
    """Top-1 routing with a capacity (`cumsum` of the one-hot mask), experts in a
    `ModuleDict` chosen by an f-string of a traced index."""

    def __init__(self):
        super().__init__({f"expert_{i}": nn.Sequential(nn.Linear(HIDDEN, 12), nn.ReLU(),
                                                       nn.Linear(12, HIDDEN))
                          for i in range(EXPERTS)})
        self.router = nn.Linear(HIDDEN, EXPERTS)

    def forward(self, x):
        probs = torch.softmax(self.router(x), dim=-1)
        onehot = nn.functional.one_hot(probs.argmax(-1), EXPERTS)
        onehot = onehot * (torch.cumsum(onehot, dim=-2) <= 3)
        x, onehot = x.view(-1, HIDDEN), onehot.view(-1, 1, EXPERTS)
        weight = probs.max(-1).values.view(-1, 1)
        out = torch.zeros_like(x)
        mask = onehot.permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            idx, tok = torch.where(mask[e].squeeze(0))
            y = self[f"expert_{e[0]}"](x[None, tok].reshape(-1, HIDDEN)) * weight[tok, idx, None]
            out.index_add_(0, tok, y)
        return out


class MaskedRows(nn.Module):
    """`for row in (x > t).nonzero()`: zero rows on the example, several on other inputs."""

    def forward(self, x):
        acc = x.sum() * 0
        for row in (x > 1.5).nonzero():
            acc = acc + x[row[0], row[1]] * (row[1] + 1)
        return acc


def _routings(shape, n, seed):
    """Random inputs at three scales, then every token alike (one routing), half the
    tokens zero (router ties) and a NaN token."""
    xs = randn_inputs(shape, n, seed=seed)
    alike = xs[0][:, :1].expand(shape).contiguous()
    ties = xs[1].clone()
    ties[:, ::2] = 0
    nan = xs[2].clone()
    nan[0, -1, 3] = float("nan")
    return xs + [alike, ties, nan]


def _hits(model, x) -> int:
    """Number of experts the eager model's loop visits on `x`."""
    with torch.no_grad():
        idx = torch.topk(model.router(x.view(-1, HIDDEN)), 2, dim=-1).indices
    return int(idx.unique().numel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_over_experts_hit(backend):
    torch.manual_seed(0)
    model = HitLoopExperts().eval()
    xs = _routings((1, 3, HIDDEN), 24, seed=1)
    alike = xs[24]  # compiled on one routing: two experts hit, not unrolled to two
    _, paths = assert_matches_eager(model, [alike] + xs, backend=backend)
    hits = {_hits(model, x) for x in xs}
    assert len(hits) >= 2 and {len(p) for p in paths} != {len(paths[0])}, (hits, paths)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_over_experts_hit_dynamic_seq(backend):
    torch.manual_seed(0)
    model = HitLoopExperts().eval()
    cm = dycomp.compile(model, (torch.randn(1, 4, HIDDEN),), backend=backend,
                        dynamic_dims={"x": {0: "batch", 1: "seq"}})
    for b, s in ((1, 1), (2, 7), (3, 3)):
        assert_matches_eager(model, _routings((b, s, HIDDEN), 6, seed=b * 10 + s), cm=cm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_dict_by_fstring(backend):
    torch.manual_seed(0)
    model = NamedExperts().eval()
    xs = _routings((1, 6, HIDDEN), 24, seed=2)
    _, paths = assert_matches_eager(model, xs, backend=backend)
    assert len({tuple(p) for p in paths}) >= 4, paths


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_over_rows_empty_on_example(backend):
    model = MaskedRows()
    xs = [torch.zeros(3, 4)] + randn_inputs((3, 4), 12, seed=3)
    _, paths = assert_matches_eager(model, xs, backend=backend)
    assert len({len(p) for p in paths}) >= 3, paths


class UnbindRows(nn.Module):
    def forward(self, x):
        rows = torch.unbind((x > 0).nonzero())
        return rows[0]


class FormatVector(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 4)})

    def forward(self, x):
        return self.heads[f"{x.argmax(1)}"](x)


class StrKey(nn.Module):
    """`str(t)` of a 0-d tensor is `tensor(1)` in PyTorch, `1` on numpy."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({"tensor(0)": nn.Linear(4, 4), "tensor(1)": nn.Linear(4, 4)})

    def forward(self, x):
        return self.heads[str(x.sum().gt(0).long())](x)


class FormatKeys(nn.Module):
    """`format(t)` and f-strings with a spec and a conversion select the module; an
    f-string of a traced value in a raised message keeps the example's text."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleDict({f"{a}_{b:03d}_'{a}'": nn.Linear(4, 4)
                                    for a in range(2) for b in range(3)})

    def forward(self, x):
        a, b = x.sum().gt(0).long(), x[0].argmax() % 3
        if x.abs().max() > 50:
            raise ValueError(f"too large: {x.abs().max()}")
        return self.heads[format(a) + f"_{b:03d}_{str(int(a))!r}"](x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_format_builtin_and_spec(backend):
    torch.manual_seed(0)
    model = FormatKeys().eval()
    _, paths = assert_matches_eager(model, randn_inputs((2, 4), 24, seed=4), backend=backend)
    assert len({tuple(p) for p in paths}) >= 4, paths
    cm = dycomp.compile(model, (torch.randn(2, 4),), backend=backend)
    with pytest.raises(ValueError, match="too large"):
        cm(torch.full((2, 4), 60.0))


@pytest.mark.parametrize("model, construct", [
    (UnbindRows(), "`unbind` gives a number of tensors that depends on the data"),
    (FormatVector(), "an f-string formatting a tensor of more than one element"),
    (StrKey(), "str() of a tensor traced from the data"),
])
def test_unfaithful_constructs_raise(model, construct):
    with pytest.raises(dycomp.UnsupportedError) as err:
        dycomp.compile(model, (torch.randn(3, 4),))
    assert construct in str(err.value) and "test_hf_moe_constructs.py:" in str(err.value)


class _Instantiating(OrderedDict):
    """Like transformers' ACT2FN: reading an item builds a new module."""

    def __getitem__(self, key):
        return super().__getitem__(key)()


ACTS = _Instantiating(relu=nn.ReLU, tanh=nn.Tanh)


class UsesActs(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = ACTS["tanh"]

    def forward(self, x):
        return self.act(x) + 1


def test_capture_keeps_dicts_that_compute_items():
    before = dict(dict.items(ACTS))
    cm = dycomp.compile(UsesActs(), (torch.randn(2, 3),))
    assert all(dict.__getitem__(ACTS, k) is v for k, v in before.items())
    assert isinstance(ACTS["relu"], nn.ReLU)
    x = torch.randn(2, 3)
    assert torch.allclose(cm(x), torch.tanh(x) + 1)


class _Registry(dict):
    """transformers' output-capturing registry: zero-arg `super()` in an `or`."""

    def get(self, key):
        return super().get(key) or 0.5


REGISTRY = _Registry(a=2.0)


class UsesSuperInOr(nn.Module):
    def forward(self, x):
        return x * REGISTRY.get("a") + x * REGISTRY.get("b") if x.sum() > 0 else x


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_arg_super_inside_boolop(backend):
    assert_matches_eager(UsesSuperInOr(), randn_inputs((2, 3), 8, seed=5), backend=backend)


class GroupedExperts(nn.Module):
    """transformers' `grouped_mm` experts: pairs sorted by expert, counted with `histc`,
    multiplied group by group with `torch._grouped_mm`, put back in order and summed."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(HIDDEN, EXPERTS, bias=False)
        self.w = nn.Parameter(torch.randn(EXPERTS, HIDDEN, HIDDEN) * 0.3)

    def forward(self, x):
        weights, index = torch.topk(torch.softmax(self.router(x), -1), 2, dim=-1)
        ids, perm = torch.sort(index.reshape(-1))
        counts = torch.histc(ids.float(), bins=EXPERTS, min=0, max=EXPERTS - 1)
        offs = torch.cumsum(counts, dim=0, dtype=torch.int32)
        y = torch._grouped_mm(x[perm // 2], self.w.transpose(-2, -1), offs=offs)
        y = y * weights.reshape(-1)[perm].unsqueeze(-1)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.size(0))
        return y[inv].view(x.shape[0], 2, HIDDEN).sum(1), counts


class Histogram(nn.Module):
    def forward(self, x):
        return torch.histc(x, bins=5, min=-1, max=1), torch.histc(x * 3, bins=3, min=0, max=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_mm_and_histc(backend):
    torch.manual_seed(0)
    xs = randn_inputs((6, HIDDEN), 16, seed=6)
    assert_matches_eager(GroupedExperts().eval(), xs, backend=backend)
    edges = torch.tensor([[-1.0, 1.0, 0.2, 0.4, 2 / 3, float("nan"), -1.5, 1.5]])
    assert_matches_eager(Histogram(), [edges] + randn_inputs((1, 8), 8, seed=7),
                         backend=backend)


class RowsOfVaryingWidth(nn.Module):
    def forward(self, x):
        acc = x.sum() * 0
        for row in x[x.sum(1) > 0]:
            acc = acc + row.sum()
        return acc


def test_rows_of_varying_width_raise():
    with pytest.raises(dycomp.UnsupportedError, match="rows change size") as err:
        dycomp.compile(RowsOfVaryingWidth(), (torch.randn(3, 4),),
                       dynamic_dims={"x": {1: "n"}})
    assert "test_hf_moe_constructs.py:" in str(err.value)
