"""Zoo interface plumbing shared by the example files: random inputs, seeded construction,
hook-based path recording and the ``__main__`` path-frequency printout.

Only the harness lives here; every model and its ``forward`` stays in its own file.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

CALIB_SEED = 10_000  # calibration batches use seed CALIB_SEED + seed, apart from evaluation inputs


# ----------------------------------------------------------------------------- inputs


def log_scale(g: torch.Generator) -> float:
    """A random input scale, log-uniform over [e^-1, e]."""
    return math.exp(2.0 * torch.rand((), generator=g).item() - 1.0)


def draw_inputs(draw: Callable[[torch.Generator], torch.Tensor], n: int, seed: int) -> list[tuple]:
    """``n`` one-tensor input tuples, ``draw(g)`` each, from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [(draw(g),) for _ in range(n)]


def scaled_randn(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Gaussian noise of ``shape`` at a random scale."""
    scale = log_scale(g)
    return scale * torch.randn(*shape, generator=g)


def randn_inputs(n: int, seed: int, shape: tuple[int, ...]) -> list[tuple]:
    return draw_inputs(lambda g: scaled_randn(g, shape), n, seed)


def image(g: torch.Generator) -> torch.Tensor:
    """A random 1x3x32x32 "image": smooth blobs + pixel noise, random scale and offset."""
    scale = log_scale(g)
    low = F.interpolate(
        torch.randn(1, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear", align_corners=False
    )
    noise = torch.randn(1, 3, 32, 32, generator=g)
    offset = 0.5 * torch.randn(1, 3, 1, 1, generator=g)
    return scale * (low + 0.5 * noise) + offset


def image_inputs(n: int, seed: int = 0) -> list[tuple]:
    return draw_inputs(image, n, seed)


# ----------------------------------------------------------------------------- make()


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` in eval mode, its random init seeded with ``seed`` without touching the
    global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def calibration_batch(sample_inputs: Callable[..., list[tuple]], n: int, seed: int) -> torch.Tensor:
    """The first input tensors of ``sample_inputs(n, CALIB_SEED + seed)``, concatenated."""
    return torch.cat([t[0] for t in sample_inputs(n, seed=CALIB_SEED + seed)])


# ----------------------------------------------------------------------------- path labels


@torch.no_grad()
def record(model: nn.Module, inputs: tuple, modules: Sequence[nn.Module], fn: Callable) -> list:
    """Run ``model(*inputs)`` with a forward hook on each of ``modules``.

    Returns ``fn(i, args, output)`` for every call of ``modules[i]``, in call order.
    """
    seen = []
    handles = [
        m.register_forward_hook(lambda _, args, out, i=i: seen.append(fn(i, args, out)))
        for i, m in enumerate(modules)
    ]
    try:
        model(*inputs)
    finally:
        for hd in handles:
            hd.remove()
    return seen


@torch.no_grad()
def path_keys(model: nn.Module, inputs: list[tuple], key_fn: Callable,
              method: str = "forward") -> list:
    """The eager path label ``key_fn(model, inp, output)`` of ``model.<method>`` on each input."""
    fn = getattr(model, method)
    return [key_fn(model, inp, fn(*inp)) for inp in inputs]


# ----------------------------------------------------------------------------- __main__ printout


def print_frequencies(keys: list, what: str, width: int | None = None, *, prefix: str = "",
                      suffix: str = "", sort_key: Callable | None = None) -> Counter:
    """Print how many distinct path labels ``keys`` holds and, given a column ``width``, how
    often each occurs; returns the counts."""
    counts = Counter(keys)
    print(f"{prefix}{len(counts)} distinct {what} over {len(keys)} inputs{suffix}")
    if width is not None:
        print_table(counts, width, sort_key)
    return counts


def print_table(counts: Counter, width: int, sort_key: Callable | None = None) -> None:
    total = sum(counts.values())
    for key, c in sorted(counts.items(), key=sort_key):
        print(f"  {key!s:>{width}}  {c:4d}  {100 * c / total:5.1f}%")


def print_block_usage(keys: list[tuple], verb: str) -> None:
    """Per-block and per-input counts of blocks run, for 0/1 block-decision labels."""
    on = [sum(k[i] for k in keys) for i in range(len(keys[0]))]
    print(f"per-block '{verb}' count (of {len(keys)}):", on)
    n_on = [sum(k) for k in keys]
    print(f"blocks {verb} per input: min {min(n_on)} max {max(n_on)}")
