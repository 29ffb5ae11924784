"""KeepDecisions: fine-tune a pruned copy so that it decides as the model it came from.

Pruning moves a dynamic network's decisions: an exit's confidence, a gate's score. The
pruned copy then leaves at other exits and turns other blocks on, so it is less
accurate *and* does other work than the model it replaces. This fine-tune runs both
models as written (batch 1, their own Python control flow), the copy forced along the
reference's path (each `if` answers as the reference's did), and trains the copy on the
reference's outputs plus, for every decision, a hinge on the copy's margin (`conf > t`
has margin `conf - t`): it must fall on the reference's side, as far as the reference's
does (up to `margin`).

`DecisionRecorder` is how: a `TorchFunctionMode` that records, in order, every tensor
Python code turns into a Python value (`bool(t)`, `t.item()`, `float(t)`, ...), as the
margin of the comparison that made it when there is one, and every hard gate, a
comparison cast to a number (`m = (p > 0.5).float()`), which decides whether a block's
result is used even when it is only multiplied in. A gate passes its comparison's margin
on: `m[0, i] > 0.5` has margin `p[0, i] - 0.5` (BlockDrop-style policies).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

Tensor = torch.Tensor
# by name: `x > t` reaches the mode as TensorBase.gt, torch.gt(x, t) as torch.gt
_READS = {"__bool__", "item", "__float__", "__int__", "__index__", "tolist"}
_SIDES = {**dict.fromkeys(("gt", "ge", "greater", "greater_equal", "__gt__", "__ge__"), 1),
          **dict.fromkeys(("lt", "le", "less", "less_equal", "__lt__", "__le__"), -1)}
_CASTS = {"float", "double", "half", "bfloat16", "int", "long", "to", "type", "type_as"}


@dataclass(frozen=True)
class Decision:
    """A value Python code read: a comparison's margin (`is_margin`: positive means
    the comparison held) or the tensor itself."""

    value: torch.Tensor
    is_margin: bool

    def key(self):
        """What the program decided: the comparison's outcome, an integer read (an
        index, a count); None for a float read (what Python does with it is unseen)."""
        if self.is_margin:
            return tuple((self.value > 0).flatten().tolist())
        if self.value.is_floating_point():
            return None
        return tuple(self.value.detach().flatten().tolist())


class DecisionRecorder(TorchFunctionMode):
    """`with DecisionRecorder() as rec: model(x)`; then `rec.decisions`, in order.

    `forced`: decisions of another run; each `bool(comparison)` answers as that run's
    did, so the model follows that run's path (teacher forcing)."""

    def __init__(self, forced: list[Decision] | None = None):
        super().__init__()
        self.decisions: list[Decision] = []
        self.forced = forced or []
        self._margins: dict[int, tuple] = {}  # id(result) -> (result, margin, is a gate)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        side = _SIDES.get(name)
        x = args[0] if args and isinstance(args[0], Tensor) else None
        if side is not None and isinstance(out, Tensor) and len(args) == 2:
            a, b = args
            gate = self._margin(a, gate=True)
            if gate is not None and isinstance(b, (int, float)) and 0 < b < 1:
                self._margins[id(out)] = (out, side * gate, False)  # `gate > 0.5`
            else:
                self._margins[id(out)] = (out, side * (a - b), False)
        elif name in _CASTS and x is not None and x.dtype == torch.bool and \
                (margin := self._margin(x)) is not None and isinstance(out, Tensor) and \
                out.dtype != torch.bool:  # to a number, not `mask.to(device)`
            # a hard gate, `(p > 0.5).float()`: 1 where the comparison's margin is > 0. A
            # decision even if Python never reads it (a gate multiplied in); forced, the
            # gate is the other run's
            self.decisions.append(Decision(margin, True))
            forced = self._forced()
            if forced is not None and forced.shape == margin.shape:
                out = (forced > 0).to(out.dtype)
            self._margins[id(out)] = (out, margin, True)
        elif name == "__getitem__" and (made := self._made(x)) and isinstance(out, Tensor):
            _, margin, gate = made
            self._margins[id(out)] = (out, margin[args[1]], gate)
        elif name in _READS and x is not None:
            made = self._made(x)
            self.decisions.append(Decision(made[1], True) if made else Decision(x, False))
            forced = self._forced()
            if name == "__bool__" and made and forced is not None and forced.numel() == 1:
                return bool(forced > 0)
        return out

    def _made(self, x) -> tuple | None:
        """(result, margin, is a gate) if `x` is a comparison's or a hard gate's result."""
        made = self._margins.get(id(x)) if x is not None else None
        return made if made and made[0] is x else None

    def _margin(self, x, gate: bool = False):
        """The margin behind `x`: a comparison's result, or (`gate`) a hard gate's."""
        made = self._made(x)
        return made[1] if made and made[2] == gate else None

    def _forced(self):
        """The other run's margin for the decision just recorded (None: not a margin)."""
        k = len(self.decisions) - 1
        return self.forced[k].value if k < len(self.forced) and self.forced[k].is_margin \
            else None


def record(fn, args: tuple, forced: list[Decision] | None = None
           ) -> tuple[object, list[Decision]]:
    """`fn(*args)` and the decisions it took (following `forced`'s, if given)."""
    with DecisionRecorder(forced) as rec:
        out = fn(*args)
    return out, rec.decisions


@dataclass
class KeepDecisions:
    """Fine-tune `model` towards `reference`'s outputs and decisions (see the module
    docstring). `margin`: how far on the reference's side a decision must be, at most
    (the reference's own margin when smaller)."""

    epochs: int = 3
    max_seconds: float = 60.0
    lr: float = 3e-4  # Adam
    margin: float = 0.05
    decision_weight: float = 1.0  # against the output distance, relative to its scale
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "max_seconds", "lr", "decision_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"KeepDecisions({name}={v!r}): must be a positive number")
        if not isinstance(self.margin, (int, float)) or self.margin < 0:
            raise ValueError(f"KeepDecisions(margin={self.margin!r}): must be >= 0")

    def apply(self, model: nn.Module, reference: nn.Module, inputs: Sequence[tuple], *,
              method: str = "forward") -> KeepReport:
        """Fine-tune `model` in place (eval mode: batch-1 statistics would be noise) on
        the input tuples; returns the path agreement before and after."""
        inputs = [x if isinstance(x, tuple) else (x,) for x in inputs]
        if not inputs:
            raise ValueError("KeepDecisions.apply needs at least one input tuple")
        fn, ref = getattr(model, method), getattr(reference, method)
        model.eval()
        with torch.no_grad():
            targets = [record(ref, x) for x in inputs]
        before = agreement(fn, inputs, targets)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        order, rng, start, steps = list(range(len(inputs))), random.Random(self.seed), \
            time.perf_counter(), 0
        for _ in range(self.epochs):
            rng.shuffle(order)
            for i in order:
                if time.perf_counter() - start > self.max_seconds:
                    break
                out, decided = record(fn, inputs[i], forced=targets[i][1])
                loss = self.loss(out, decided, *targets[i])
                if loss.requires_grad:
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                steps += 1
        return KeepReport(before, agreement(fn, inputs, targets), steps,
                          time.perf_counter() - start, max(len(t[1]) for t in targets))

    def loss(self, out, decided: list[Decision], ref_out, ref_decided: list[Decision]):
        """Output distance plus the decision hinges (the model ran the reference's path,
        so every decision and output has its counterpart)."""
        total = sum((_relative_mse(a, b) for a, b in zip(_tensors(out), _tensors(ref_out))
                     if a.shape == b.shape and a.is_floating_point()), torch.zeros(()))
        for mine, theirs in zip(decided, ref_decided):
            if mine.value.shape != theirs.value.shape:
                break
            if mine.value.is_floating_point() and mine.value.requires_grad:
                if theirs.is_margin and mine.is_margin:
                    # as far on the reference's side as the reference is, up to `margin`:
                    # a copy that decides as the reference does is left alone
                    side = torch.where(theirs.value > 0, 1.0, -1.0)
                    need = theirs.value.abs().clamp(max=self.margin)
                    hinge = torch.relu(need - side * mine.value).mean()
                    total = total + self.decision_weight * hinge
                elif not theirs.is_margin:
                    total = total + self.decision_weight * nn.functional.mse_loss(
                        mine.value, theirs.value)
        return total


def _relative_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared error relative to the reference's magnitude (logits of any scale)."""
    return ((a - b) ** 2).mean() / ((b ** 2).mean() + 1e-6)


def _tensors(out) -> list[torch.Tensor]:
    return [x for x in tree_flatten(out)[0] if isinstance(x, torch.Tensor)]


@dataclass
class KeepReport:
    agreement_before: float  # fraction of inputs deciding exactly as the reference
    agreement_after: float
    steps: int
    seconds: float
    decisions: int = 0  # the most decisions the reference took on one input

    def summary(self) -> str:
        if not self.decisions:
            return (f"no decisions seen: the model's Python reads no comparison and casts "
                    f"none to a gate; fine-tuned on its outputs only ({self.steps} steps, "
                    f"{self.seconds:.1f} s)")
        return (f"decisions kept on {self.agreement_before:.0%} -> {self.agreement_after:.0%} "
                f"of the inputs (up to {self.decisions} per input; {self.steps} steps, "
                f"{self.seconds:.1f} s)")


def agreement(fn, inputs: list[tuple], targets: list) -> float:
    """Fraction of inputs on which `fn` takes the recorded decisions."""
    same = 0
    with torch.no_grad():
        for x, (_, ref) in zip(inputs, targets):
            _, mine = record(fn, x)
            same += [d.key() for d in mine] == [d.key() for d in ref]
    return same / len(inputs)
