"""Layer-adaptive pruning amounts: minimize the summed output distortion under a budget.

After "Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep Neural
Networks" (Xu et al., ICCV 2023): the output distortion caused by pruning several units
(layers, or channel groups) is close to the *sum* of the distortions each causes alone.
So each unit's distortion is measured alone at every candidate ratio (by masking, on
sample inputs, through the model's own dynamic forward), and a knapsack-style dynamic
program picks one ratio per unit: least total distortion among the choices that remove
at least as many parameters as uniform pruning at `amount` would.

Distortion of one run: squared error of every output tensor over its mean square, plus
1 for each output whose structure changes (another exit taken, another shape).
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

log = logging.getLogger(__name__)

RATIOS = tuple(i / 10 for i in range(10))  # candidate ratios, 0 .. 0.9
# No unit is pruned more than this much beyond the global amount. Distortion saturates
# once a layer is wrecked (relative error ~1), which makes "prune one group 90 %" look
# cheaper than sharing the budget; that is where additivity stops holding.
MAX_OVER = 0.25
STEPS = 200  # budget resolution of the dynamic program


def channels_to_prune(n: int, ratio: float, round_to: int = 1) -> int:
    """Channels removed from `n` at `ratio`; at least one always stays, and what stays is
    a multiple of `round_to` (rounded up) or all `n`."""
    kept = n - min(int(n * ratio + 1e-9), n - 1)
    return n - min(n, -(-kept // round_to) * round_to)


def candidates(n: int, amount: float, round_to: int = 1) -> list[float]:
    """The ratios tried on a group of `n` channels: the `RATIOS` grid, or with `round_to`
    every multiple of it that can stay; at most `MAX_OVER` beyond `amount`."""
    if round_to == 1:
        ratios = RATIOS
    else:
        ratios = [1 - k / n for k in (n, *range(round_to * ((n - 1) // round_to), 0, -round_to))]
    return [r for r in ratios if r <= amount + MAX_OVER + 1e-9]


def allocate(fn, samples, dg, groups, amount: float, names: dict, round_to: int = 1) -> dict:
    """Ratio per channel group (keyed by its root module's name) for structured pruning.

    With `round_to`, groups keep multiples of it; the budget stays what uniform pruning
    removes without rounding."""
    import torch_pruning as tp

    importance = tp.importance.GroupMagnitudeImportance(p=2)
    masks, shares, sizes = {}, [], {}
    for group in groups:
        root = group[0].dep
        n = len(group[0].idxs)
        order = torch.argsort(importance(group)).tolist()

        def mask(ratio, root=root, order=order, n=n):
            idxs = order[:channels_to_prune(n, ratio, round_to)]
            return _zero_channels(dg.get_pruning_group(root.target.module, root.handler, idxs))

        key = names[root.target.module]
        sizes[key], masks[key] = n, mask
        shares += [(key, d.target.module, d.handler.__name__, len(i)) for d, i in group
                   if isinstance(d.target.module, nn.Module)]
    removed = _removed_params(shares, sizes, round_to)
    # a group's cost alone: what pruning only that group removes
    units = {key: (lambda r, key=key: removed({key: r}), mask) for key, mask in masks.items()}
    target = _removed_params(shares, sizes)(dict.fromkeys(units, amount))
    tried = {key: candidates(n, amount, round_to) for key, n in sizes.items()}
    return _solve(fn, samples, units, amount, removed, target, tried)


def _removed_params(shares, sizes: dict, round_to: int = 1):
    """ratios -> parameters pruning would remove, exactly: a layer that loses a fraction
    fo of its outputs and fi of its inputs keeps (1 - fo)(1 - fi) of its weight."""
    layers = {}
    for key, module, handler, n in shares:
        w = getattr(module, "weight", None)
        if w is None:
            continue
        side = "in" if handler == "prune_in_channels" else "out"
        dim = w.shape[1] * getattr(module, "groups", 1) if side == "in" else w.shape[0]
        layers.setdefault(module, {"in": [], "out": []})[side].append((key, n / dim))

    def removed(ratios: dict) -> float:
        ratios = {k: channels_to_prune(sizes[k], r, round_to) / sizes[k]
                  for k, r in ratios.items()}
        total = 0.0
        for module, sides in layers.items():
            fo, fi = (min(1.0, sum(ratios.get(k, 0.0) * f for k, f in sides[s]))
                      for s in ("out", "in"))
            bias = module.bias.numel() if getattr(module, "bias", None) is not None else 0
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                total += module.weight.numel() * (1 - (1 - fo) * (1 - fi)) + bias * fo
            else:  # norms: per-channel parameters
                total += (module.weight.numel() + bias) * fo
        return total
    return removed


def allocate_weights(fn, samples, layers: dict, amount: float) -> dict:
    """Ratio per layer (keyed by name) for unstructured magnitude pruning."""
    units = {name: (_weight_cost(m), lambda r, m=m: _zero_weights(m, r))
             for name, m in layers.items()}
    return _solve(fn, samples, units, amount)


def _weight_cost(module):
    n = module.weight.numel()
    return lambda r: n * r


def _solve(fn, samples, units: dict, amount: float, removed=None, target=None,
           tried=None) -> dict:
    """Per-unit ratios, among `tried[unit]` (default: `candidates`). `removed(ratios)`,
    when given, counts the parameters a choice really removes: the budget is then matched
    to `target`, uniform pruning's exact count."""
    reference = _run(fn, samples)
    tried = tried or dict.fromkeys(units, candidates(0, amount))
    table = {}
    for name, (_, mask) in units.items():
        row = {}
        for r in tried[name]:
            if r == 0:
                row[r] = 0.0
                continue
            with mask(r):
                row[r] = _distortion(reference, _run(fn, samples))
        table[name] = row
        log.debug("distortion %s: %s", name, row)
    costs = {name: {r: cost(r) for r in tried[name]} for name, (cost, _) in units.items()}
    budget = sum(cost(amount) for cost, _ in units.values())  # what uniform removes
    if removed is None:
        return knapsack(table, costs, budget)
    # the least additive budget whose choice removes enough
    lo, hi = 0.0, max(2 * budget, sum(max(row.values()) for row in costs.values()))
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(knapsack(table, costs, mid)) < target else (lo, mid)
    return knapsack(table, costs, hi)


def knapsack(distortion: dict, costs: dict, budget: float) -> dict:
    """One ratio per unit: minimum summed distortion with summed cost >= budget.

    `distortion[u][r]` and `costs[u][r]` for every unit u and candidate ratio r. Costs are
    discretized into `STEPS` steps of the budget (rounded down, so the budget is met)."""
    if budget <= 0:
        return {u: 0.0 for u in distortion}
    step = budget / STEPS
    best = {0: (0.0, {})}  # budget steps reached (capped) -> (distortion, choice)
    for u, row in distortion.items():
        nxt: dict[int, tuple] = {}
        for reached, (d, choice) in best.items():
            for r, dr in row.items():
                b = min(STEPS, reached + math.floor(costs[u][r] / step + 1e-9))
                if b not in nxt or d + dr < nxt[b][0]:
                    nxt[b] = (d + dr, {**choice, u: r})
        best = nxt
    if STEPS not in best:  # the budget is out of reach: take the most pruning possible
        return best[max(best)][1]
    return best[STEPS][1]


def _run(fn, samples) -> list:
    with torch.no_grad():
        return [tree_flatten(fn(*s))[0] for s in samples]


def _distortion(reference: list, outputs: list) -> float:
    total = 0.0
    for ref, out in zip(reference, outputs):
        total += _sample_distortion(ref, out)
    return total / max(len(reference), 1)


def _sample_distortion(ref: list, out: list) -> float:
    """Summed relative squared error of the output tensors, plus 1 for each output that
    changed structure (a decision: another exit index, another shape)."""
    if len(ref) != len(out):
        return 1.0 + len(ref)
    d = 0.0
    for a, b in zip(ref, out):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape or a.dtype != b.dtype:
                d += 1.0
            elif a.is_floating_point():
                d += float(((a - b) ** 2).mean() / ((a ** 2).mean() + 1e-12))
            else:
                d += float(not torch.equal(a, b))
        else:
            d += float(a != b)
    return d


@contextlib.contextmanager
def _zero_channels(group):
    """Zero the group's channels in every member's output: as if they were removed."""
    hooks = []
    for dep, idxs in group:
        module = dep.target.module
        if isinstance(module, nn.Module) and dep.handler.__name__ == "prune_out_channels":
            dim = -1 if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)) else 1
            hooks.append(module.register_forward_hook(_zeroer(list(idxs), dim)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _zeroer(idxs, dim):
    def hook(_, __, out):
        out = out.clone()
        out.index_fill_(dim % out.dim(), torch.tensor(idxs, dtype=torch.long), 0.0)
        return out
    return hook


@contextlib.contextmanager
def _zero_weights(module, ratio: float):
    saved = module.weight.data.clone()
    k = int(saved.numel() * ratio)
    if k:
        cut = saved.abs().flatten().kthvalue(k).values
        module.weight.data[saved.abs() <= cut] = 0.0
    try:
        yield
    finally:
        module.weight.data.copy_(saved)
