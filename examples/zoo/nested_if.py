"""Nested data-dependent if/elif/else with re-joining paths, plus assorted static Python.

A small MLP on 1x16 vectors. The mean activation picks one of three transforms
(``if``/``elif``/``else``, the ``up`` arm holding a nested ``if``); the paths rejoin,
then a second, independent ``if`` on ``x.std()`` decides whether to renormalise.
Along the way: ``bool(t)``, ``float(t)``, ``int(t)``, masked assignment, a config
dataclass, ``isinstance`` on a submodule, ``self.training``, an optional keyword
argument checked with ``is None``, and a dict output mixing a tensor with Python
ints / bools / floats / None.

Random weights; the config thresholds are set in ``make()`` (quantiles of the
decision statistics on a fixed calibration batch) so all 8 paths occur.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

if __package__:
    from . import common
else:  # run as a script, or loaded by path: common.py is a sibling
    import common


@dataclass
class Config:
    in_dim: int = 16
    hidden: int = 32
    num_classes: int = 10
    upper: float = 0.1
    lower: float = -0.1
    std_threshold: float = 1.0
    clamp: float = 0.8
    use_norm: bool = True
    dropout: float = 0.1


class NestedIfNet(nn.Module):
    def __init__(self, cfg: Config | None = None):
        super().__init__()
        if cfg is None:
            cfg = Config()
        self.cfg = cfg
        h = cfg.hidden
        self.in_norm = nn.LayerNorm(cfg.in_dim)
        self.fc_in = nn.Linear(cfg.in_dim, h)
        self.up = nn.Sequential(nn.Linear(h, h), nn.Tanh())
        self.down = nn.Linear(h, h)
        self.mid = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h))
        self.norm = nn.LayerNorm(h) if cfg.use_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(h, cfg.num_classes)

    def forward(self, x, bias=None):
        if bias is not None:
            x = x + bias
        h = F.gelu(self.fc_in(self.in_norm(x)))
        s = h.mean()
        if s > self.cfg.upper:
            h = self.up(h)
            if h[0, 0] > 0:
                h = h * 2.0
                branch = 0
            else:
                h = -h
                branch = 1
        elif bool(s < self.cfg.lower):
            h = self.down(h)
            branch = 2
        else:
            h = self.mid(h) + h
            branch = 3

        if x.std() > self.cfg.std_threshold:
            scale = float(h.abs().max())
            h = h / scale
            normalized = True
        else:
            normalized = False

        h[h < -self.cfg.clamp] = -self.cfg.clamp
        n_active = int((h > 0).sum())
        if isinstance(self.norm, nn.LayerNorm):
            h = self.norm(h)
        if self.training:
            h = self.drop(h)
        logits = self.head(h)
        return {
            "logits": logits,
            "branch": branch,
            "normalized": normalized,
            "n_active": n_active,
            "score": float(s),
            "bias": bias,
        }


# ----------------------------------------------------------------------------- zoo interface

METHOD = "forward"


def _vector(g: torch.Generator) -> torch.Tensor:
    scale = common.log_scale(g)
    shift = 0.5 * torch.randn((), generator=g).item()
    return scale * torch.randn(1, 16, generator=g) + shift


def sample_inputs(n: int, seed: int = 0) -> list[tuple]:
    return common.draw_inputs(_vector, n, seed)


@torch.no_grad()
def _calibrate(model: NestedIfNet, x: torch.Tensor) -> None:
    """Thresholds at quantiles: branches up / down / mid take 1/2, 1/4, 1/4 of inputs,
    the nested test splits ``up`` in half, and the std test splits everything in half."""
    h = F.gelu(model.fc_in(model.in_norm(x)))
    s = h.mean(1)
    model.cfg.upper = torch.quantile(s, 0.5).item()
    model.cfg.lower = torch.quantile(s, 0.25).item()
    up = model.up[0](h[s > model.cfg.upper])[:, 0]
    model.up[0].bias[0] -= up.median()
    model.cfg.std_threshold = torch.quantile(x.std(1), 0.5).item()


def make(seed: int = 0) -> tuple[nn.Module, tuple]:
    model = common.seeded(lambda: NestedIfNet(Config()), seed)
    _calibrate(model, common.calibration_batch(sample_inputs, 512, seed))
    return model, sample_inputs(1, seed=seed)[0]


def path_key(model, inputs: tuple, output):
    """(branch 0..3, normalized) read from the output dict."""
    return (output["branch"], output["normalized"])


PATHS = {(b, n) for b in range(4) for n in (False, True)}


if __name__ == "__main__":
    model, example = make()
    keys = common.path_keys(model, sample_inputs(200), path_key)
    common.print_frequencies(keys, "paths", 12)
