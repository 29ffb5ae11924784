"""Random operations stay random in the compiled model.

A random op whose arguments are all static (`torch.rand(())`) would otherwise run once
at capture and be baked in as a constant; here it is recorded into the open region, so
every call draws again (ONNX `RandomUniform*` / `RandomNormal*` / `Multinomial`; the
torch backend calls the op itself). In-place draws (`uniform_`, `normal_`,
`exponential_`, `bernoulli_`) are rewritten into out-of-place ops ONNX can express, and
dropout modules in training mode are recorded as `F.dropout(..., training=True)` (the
exporters would otherwise export them in eval mode, as identities).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

# Functions that draw from the global generator (called with static arguments or not).
RANDOM_FUNCTIONS = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like,
                    torch.randint_like, torch.bernoulli, torch.multinomial, torch.normal,
                    torch.poisson, torch.randperm, F.dropout, F.dropout1d, F.dropout2d,
                    F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}

_DROPOUTS = {nn.Dropout: F.dropout, nn.Dropout1d: F.dropout1d, nn.Dropout2d: F.dropout2d,
             nn.Dropout3d: F.dropout3d, nn.AlphaDropout: F.alpha_dropout,
             nn.FeatureAlphaDropout: F.feature_alpha_dropout}


def _uniform(t, a=0.0, b=1.0, *, generator=None):
    return torch.rand_like(t) * (b - a) + a


def _normal(t, mean=0.0, std=1.0, *, generator=None):
    return torch.randn_like(t) * std + mean


def _exponential(t, lambd=1.0, *, generator=None):
    return -torch.log(1.0 - torch.rand_like(t)) / lambd  # 1 - U lies in (0, 1]


def _bernoulli(t, p=0.5, *, generator=None):
    return (torch.rand_like(t) < p).to(t.dtype)


def _bernoulli_of(t, p=None, *, generator=None):
    prob = t if p is None else p
    return (torch.rand_like(t) < prob).to(t.dtype)


def _dropout_fn(feature_dims: int):
    """Dropout as a mask of uniform draws (ONNX Runtime's `Dropout` draws nothing in an
    inference session); `feature_dims` > 0: one draw per channel (`dropout2d`)."""
    def drop(x, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return x
        ref = x
        if feature_dims:
            ref = x[(slice(None),) * (x.dim() - feature_dims) + (slice(0, 1),) * feature_dims]
        keep = (torch.rand_like(ref) >= p).to(x.dtype)
        return x * keep * (1.0 / (1.0 - p)) if p < 1 else x * 0.0
    return drop


# In-place draws on a tensor, as out-of-place ops the exporters know (same distribution).
INPLACE = {"uniform_": _uniform, "normal_": _normal, "exponential_": _exponential,
           "bernoulli_": _bernoulli}
# Functions (and methods, by name) rewritten into uniform draws, for the same reason.
REWRITES = {torch.bernoulli: _bernoulli_of, F.dropout: _dropout_fn(0),
            F.dropout1d: _dropout_fn(1), F.dropout2d: _dropout_fn(2),
            F.dropout3d: _dropout_fn(3)}


def rewrite(func, name: str):
    """The rewrite of a random op applied to traced tensors, or None."""
    try:
        fn = REWRITES.get(func)
    except TypeError:
        return None
    if fn is None and name == "bernoulli" and getattr(torch.Tensor, name, None) is func:
        return _bernoulli_of
    return fn


def is_random(f) -> bool:
    """Whether calling `f` draws random numbers: a function above, or an in-place draw
    bound to an untraced tensor (on a traced one, `torchfn` sees the draw itself)."""
    try:
        if f in RANDOM_FUNCTIONS:
            return True
    except TypeError:  # unhashable callables
        return False
    owner = getattr(f, "__self__", None)
    return getattr(f, "__name__", "") in INPLACE and type(owner) is torch.Tensor


def check_generator(tr, kwargs: dict) -> None:
    """An explicit `torch.Generator` cannot be carried into the compiled model."""
    if kwargs.get("generator") is not None:
        tr.fail("random op with an explicit generator=",
                "drop generator=: the compiled model draws from its own random stream")


def call_random(tr, f, args, kwargs):
    """Record a random op into the open region, even with static arguments; an in-place
    draw on an untraced tensor (`torch.empty(3).uniform_()`) draws into a copy of it."""
    check_generator(tr, kwargs)
    owner = getattr(f, "__self__", None)
    if isinstance(owner, torch.Tensor) and getattr(f, "__name__", "") in INPLACE:
        return INPLACE[f.__name__](tr.const_tensor(owner), *args, **kwargs)
    if f is torch.multinomial:
        return multinomial(tr, *args, **kwargs)
    from dycomp.frontend import torchfn

    if f in REWRITES and args and isinstance(args[0], torch.Tensor):
        return REWRITES[f](tr.const_tensor(args[0]), *args[1:], **kwargs)

    return torchfn.record(tr, f, args, kwargs)


def multinomial(tr, p, num_samples, replacement=False, *, generator=None, out=None):
    """`torch.multinomial`, a 1-D distribution drawn as a batch of one (ONNX
    `Multinomial` takes a batch of distributions)."""
    from dycomp.frontend import torchfn

    check_generator(tr, {"generator": generator})
    if p.dim() == 1:
        return multinomial(tr, p.unsqueeze(0), num_samples, replacement).squeeze(0)
    return torchfn.record(tr, torch.multinomial, (p, num_samples, replacement), {})


def dropout(m: nn.Module):
    """The functional form of a dropout module in training mode, else None."""
    fn = _DROPOUTS.get(type(m)) if m.training else None
    if fn is None:
        return None
    rw = REWRITES.get(fn)
    return (lambda x: rw(x, m.p, True)) if rw is not None else (lambda x: fn(x, m.p, True))


@contextlib.contextmanager
def no_distribution_checks():
    """`torch.distributions` objects built during capture skip their argument checks
    (`validate_args`): those are data-dependent raises inside library code, which dycomp
    does not convert; the compiled model does not check distribution arguments."""
    saved = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(saved)


_RANDOM_TARGETS = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like,
                   torch.randint_like, torch.multinomial, torch.normal, torch.poisson,
                   torch.randperm, torch.bernoulli, F.alpha_dropout, F.feature_alpha_dropout}


def has_random(graph) -> bool:
    """Whether any region of a DynGraph draws random numbers."""
    for r in graph.regions.values():
        for n in r.gm.graph.nodes:
            if n.target in _RANDOM_TARGETS or (n.op == "call_method" and n.target in (
                    "multinomial", "bernoulli", "random_", "geometric_", "cauchy_",
                    "log_normal_")):
                return True
    return False
