"""Train, fine-tune and cache the two digit networks (CPU, 2 threads, deterministic).

``load_or_train(kind, ckpt_dir)`` returns a trained model in eval mode, training it
(and saving its ``state_dict``) the first time. ``finetune(model, ...)`` recovers the
accuracy of a pruned copy (same class, smaller layers) in a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

if __package__:
    from . import data, models
else:  # run as a script
    import data
    import models

CKPT_DIR = Path(__file__).resolve().parent / ".ckpt"
EPOCHS = {"multi_exit": 12, "gated": 12}
LR = 3e-3
BATCH = 64
GATE_TARGET = 0.6  # GatedCNN: wanted fraction of inputs that run each block
GATE_PENALTY = 2.0  # weight of the squared distance to that target
THREADS = 2

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def multi_exit_loss(model: models.MultiExitCNN, x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropies of every exit."""
    return sum(F.cross_entropy(logits, y) for logits in model.forward_all(x))


def gated_loss(model: models.GatedCNN, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy through straight-through hard gates + a target-rate penalty.

    The penalty (ConvNet-AIG-style) pulls each block's execution rate over the batch
    towards ``GATE_TARGET``, so that gates learn which inputs need a block.
    """
    logits, probs = model.forward_masked(x)
    rate = ((probs > 0.5).float() + probs - probs.detach()).mean(0)
    return F.cross_entropy(logits, y) + GATE_PENALTY * ((rate - GATE_TARGET) ** 2).sum()


LOSSES: dict[str, LossFn] = {"multi_exit": multi_exit_loss, "gated": gated_loss}


def kind_of(model: nn.Module) -> str:
    """'multi_exit' or 'gated' (also for pruned copies, which keep their class)."""
    return "multi_exit" if isinstance(model, models.MultiExitCNN) else "gated"


def fit(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
        epochs: int, lr: float = LR, seed: int = 0, max_seconds: float | None = None,
        ) -> nn.Module:
    """Adam + cosine schedule over shuffled mini-batches; returns the model in eval mode.

    Stops early (after a whole batch) once ``max_seconds`` have passed.
    """
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(x) // BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps_per_epoch))
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            loss = loss_fn(model, x[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                return model.eval()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Batched eager evaluation of the dynamic forward (eval mode).

    Returns ``accuracy`` (final answer), plus ``exits`` (fraction leaving at each exit)
    for MultiExitCNN or ``gate_off`` (fraction of inputs skipping each block) for
    GatedCNN, and ``final_accuracy`` (last exit) for MultiExitCNN.
    """
    model.eval()
    if isinstance(model, models.MultiExitCNN):
        logits, exits = models.exit_indices(model, x)
        n = len(model.blocks)
        final = model.forward_all(x)[-1]
        return {"accuracy": _acc(logits, y), "final_accuracy": _acc(final, y),
                "exits": (torch.bincount(exits, minlength=n).float() / len(x)).tolist()}
    logits, on = models.gate_patterns(model, x)
    return {"accuracy": _acc(logits, y), "gate_off": (1 - on.float().mean(0)).tolist()}


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).float().mean().item()


def describe(stats: dict) -> str:
    """One line: accuracy and the exit distribution / gate-off rates."""
    text = f"test accuracy {100 * stats['accuracy']:.1f}%"
    if "exits" in stats:
        text += f" (last exit alone {100 * stats['final_accuracy']:.1f}%), exits " + " ".join(
            f"{100 * e:.0f}%" for e in stats["exits"])
    else:
        text += ", gate off " + " ".join(f"{100 * g:.0f}%" for g in stats["gate_off"])
    return text


def train(kind: str, seed: int = 0, epochs: int | None = None, out: Path | None = None,
          verbose: bool = True, split=None) -> nn.Module:
    """Train a fresh ``kind`` model on the digits training split; optionally save it."""
    x, y, x_test, y_test = split if split is not None else data.load(seed)
    epochs = EPOCHS[kind] if epochs is None else epochs
    torch.manual_seed(seed)
    model = models.MODELS[kind]()
    start = time.perf_counter()
    fit(model, LOSSES[kind], x, y, epochs=epochs, seed=seed)
    if verbose:
        seconds = time.perf_counter() - start
        print(f"trained {kind} ({epochs} epochs, {seconds:.1f} s): "
              f"{describe(evaluate(model, x_test, y_test))}")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out)
    return model


def train_multi_exit(seed: int = 0, epochs: int | None = None, out: Path | None = None,
                     **kwargs) -> models.MultiExitCNN:
    """Train ``MultiExitCNN`` (sum of the exits' cross-entropies)."""
    return train("multi_exit", seed, epochs, out, **kwargs)


def train_gated(seed: int = 0, epochs: int | None = None, out: Path | None = None,
                **kwargs) -> models.GatedCNN:
    """Train ``GatedCNN`` (straight-through gates + compute penalty)."""
    return train("gated", seed, epochs, out, **kwargs)


def finetune(model: nn.Module, loss_fn: LossFn | None = None, epochs: int = 3, *,
             max_seconds: float = 60.0, lr: float = 1e-3, seed: int = 0,
             split=None) -> nn.Module:
    """Fine-tune ``model`` in place (e.g. a pruned copy) on the training split.

    ``loss_fn(model, x, y)`` defaults to the training loss of the model's kind. Runs at
    most ``epochs`` epochs and about ``max_seconds`` seconds; returns the model in eval mode.
    """
    x, y, _, _ = split if split is not None else data.load(seed)
    loss_fn = LOSSES[kind_of(model)] if loss_fn is None else loss_fn
    torch.manual_seed(seed)
    return fit(model, loss_fn, x, y, epochs=epochs, lr=lr, seed=seed,
               max_seconds=max_seconds)


def checkpoint_path(kind: str, ckpt_dir: Path = CKPT_DIR, seed: int = 0,
                    epochs: int | None = None) -> Path:
    """Where ``load_or_train`` keeps a model; the name records seed and epochs."""
    epochs = EPOCHS[kind] if epochs is None else epochs
    return Path(ckpt_dir) / f"{kind}-seed{seed}-e{epochs}.pt"


def load_or_train(kind: str, ckpt_dir: Path = CKPT_DIR, *, seed: int = 0,
                  epochs: int | None = None, verbose: bool = True, split=None) -> nn.Module:
    """The trained ``kind`` model in eval mode: loaded from ``ckpt_dir``, else trained."""
    path = checkpoint_path(kind, ckpt_dir, seed, epochs)
    if path.is_file():
        model = models.MODELS[kind]()
        model.load_state_dict(torch.load(path, weights_only=True))
        if verbose:
            print(f"loaded {kind} from {path}")
        return model.eval()
    return train(kind, seed, epochs, path, verbose=verbose, split=split)


if __name__ == "__main__":
    for name in EPOCHS:
        train(name)
