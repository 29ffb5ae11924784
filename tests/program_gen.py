"""Random small dynamic PyTorch programs, for differential testing of dycomp.

A generated program is the source of an ``nn.Module`` whose ``forward`` is a
random nested tree of statements over a fixed set of variables: tensors
``x, y, z`` of shape (1, 8) and Python int counters ``n, k``.  The tree mixes
tensor assignments, counter updates, ``if``/``elif``/``else`` on tensor values
and counters, early ``return`` inside branches and loops, data-dependent
``while`` loops (always bounded by a Python counter), ``for`` loops over
``range`` and over an ``nn.ModuleList`` with ``break``/``continue``.

``Builder`` grows a tree from a ``Chooser``: either hypothesis draws (see
``programs()``, which shrinks to simple programs) or a seeded ``random.Random``
(see ``random_program()``).  ``Program.source()`` renders it; with
``probe=True`` every condition is wrapped in ``self._probe(id, cond)``, which
records the outcomes so tests can check that branches really go both ways.

Run ``python tests/program_gen.py SEED [COUNT]`` to print programs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")

TENSORS = ("x", "y", "z")
COUNTERS = ("n", "k")
# Tensors that never alias the caller's input, so in-place updates are safe.
MUTABLE_TENSORS = ("y", "z")
LOOP_VARS = ("i", "j", "m")
INPUT_SCALES = (1.0, 0.3, 2.0, 0.05, 1.5, 0.7, 3.0, 0.15)
FINAL_RETURN = "x, y, z, n, k"


# --------------------------------------------------------------------------- choosers


class Chooser(Protocol):
    """Source of randomness: an integer in ``[lo, hi]``, shrinking towards ``lo``."""

    def integer(self, lo: int, hi: int) -> int: ...


class RandomChooser:
    """Chooser backed by a seeded ``random.Random``."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisChooser:
    """Chooser backed by a hypothesis ``draw`` function."""

    def __init__(self, draw: Callable):
        from hypothesis import strategies as st

        self.draw, self.st = draw, st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))


# --------------------------------------------------------------------------- program tree


@dataclass
class Cond:
    """A rendered condition and whether it depends on tensor values."""

    src: str
    tensor: bool


@dataclass
class Line:
    """A one-line statement: assignment, counter update, in-place op, break, continue."""

    src: str


@dataclass
class Return:
    """An early ``return`` of an already rendered expression."""

    value: str


@dataclass
class If:
    """``if``/``elif`` arms plus an optional ``else`` body."""

    arms: list[tuple[Cond, list]]
    orelse: list | None = None


@dataclass
class While:
    """``while cond and counter < limit:``; the body first increments the counter."""

    cond: Cond
    counter: str
    limit: int
    fresh: bool  # counter is a fresh local initialised to 0 just before the loop
    counter_first: bool  # render ``counter < limit`` before the tensor condition
    body: list


@dataclass
class For:
    """``for var in iterable:`` over ``range(...)`` or ``self.blocks``."""

    var: str
    iterable: str
    body: list


@dataclass
class Features:
    """Switches for optional constructs (all are required by the design brief)."""

    inplace: bool = True  # ``y += 0.5``, ``z.mul_(0.5)``, ``y[y < 0] = 0.0``
    int_from_tensor: bool = True  # ``n += int(x.sum() > 0)``
    module_loops: bool = True  # ``for blk in self.blocks:``
    dynamic_range: bool = True  # ``for i in range(k % 3 + 1):``
    container_returns: bool = True  # early ``return [x, n]`` / ``{"out": x}``


@dataclass
class Program:
    """A generated program: the forward body and the seed for the layer weights."""

    body: list
    seed: int = 0
    name: str = "GenNet"

    def source(self, probe: bool = False) -> str:
        """Python source of a module defining ``class GenNet(nn.Module)``."""
        return Renderer(probe).module(self)

    def __repr__(self) -> str:
        return f"Program(seed={self.seed}), forward body:\n{Renderer().forward_body(self)}"

    def _repr_pretty_(self, printer, cycle) -> None:  # used by hypothesis' reports
        printer.text(repr(self))

    def probe_kinds(self) -> list[bool]:
        """For each probe id (in order), whether that condition depends on tensors."""
        renderer = Renderer(True)
        renderer.module(self)
        return renderer.probe_tensor


# --------------------------------------------------------------------------- builder


@dataclass(frozen=True)
class Ctx:
    """Where a statement is generated: nesting depth and enclosing loops."""

    depth: int = 0
    loop_vars: tuple[str, ...] = ()  # enclosing ``range`` loop variables (< 8)
    blk: bool = False  # inside ``for blk in self.blocks``
    in_loop: bool = False


class Builder:
    """Grows a random program tree from a ``Chooser``.

    Options are listed simplest first, so hypothesis shrinks towards straight-line
    code.  ``max_stmts`` bounds the statements (a compound statement counts one,
    plus its body; bodies always hold at least one statement, and exits such as
    ``if c: break`` come on top), ``max_depth`` the nesting of compound statements.
    """

    def __init__(
        self,
        chooser: Chooser,
        features: Features | None = None,
        max_stmts: int = 8,
        max_depth: int = 3,
    ):
        self.ch = chooser
        self.features = features or Features()
        self.budget = max_stmts
        self.max_depth = max_depth
        self.fresh_counters = 0

    # ---- primitive choices

    def pick(self, options: Sequence[T]) -> T:
        return options[self.ch.integer(0, len(options) - 1)]

    def weighted(self, options: Sequence[tuple[int, T]]) -> T:
        """Choose among ``(weight, value)`` pairs; shrinks towards the first."""
        options = [(w, v) for w, v in options if w > 0]
        r = self.ch.integer(0, sum(w for w, _ in options) - 1)
        for w, v in options:
            if r < w:
                return v
            r -= w
        raise AssertionError("unreachable")

    def flag(self, percent: int) -> bool:
        """True with the given probability; shrinks towards False."""
        return self.ch.integer(0, 99) >= 100 - percent

    # ---- program and blocks

    def program(self) -> Program:
        """A forward body holding at least one control-flow statement at the top."""
        seed = self.ch.integer(0, 3)
        ctx = Ctx()
        body = [self.statement(ctx) for _ in range(self.ch.integer(0, 2))]
        body.append(self.statement(ctx, compound=True))
        while self.budget > 0 and self.flag(60):
            body.append(self.statement(ctx))
        return Program(body, seed=seed)

    def block(self, ctx: Ctx, arm: bool = False) -> list:
        """A non-empty body; an ``if`` arm may end in return/break/continue."""
        stmts = [self.statement(ctx)]
        while self.budget > 0 and self.flag(40):
            stmts.append(self.statement(ctx))
        if arm and self.flag(50):
            stmts.append(self.terminator(ctx))
        return stmts

    def statement(self, ctx: Ctx, compound: bool = False):
        """One statement; ``compound`` forces ``if``/``while``/``for``."""
        self.budget -= 1
        f = self.features
        nest = compound or (ctx.depth < self.max_depth and self.budget >= 1)
        simple = 0 if compound else 1
        kind = self.weighted(
            [
                (5 * simple, "assign"),
                (2 * simple, "counter"),
                (simple if f.inplace else 0, "inplace"),
                (5 if nest else 0, "if"),
                (2 if nest else 0, "while"),
                (2 if nest else 0, "for"),
                (1 if nest and f.module_loops and not ctx.blk else 0, "blocks"),
            ]
        )
        return getattr(self, "gen_" + kind)(ctx)

    def terminator(self, ctx: Ctx):
        kind = self.weighted(
            [
                (3, "return"),
                (1 if ctx.in_loop else 0, "break"),
                (1 if ctx.in_loop else 0, "continue"),
            ]
        )
        return Return(self.return_value()) if kind == "return" else Line(kind)

    # ---- simple statements

    def tensor_expr(self, ctx: Ctx) -> str:
        """A shape-preserving (1, 8) expression that cannot blow up (tanh or convex)."""
        a, b = self.pick(TENSORS), self.pick(TENSORS)
        kind = self.weighted(
            [
                (4, "linear"),
                (1, "seq"),
                (2 if ctx.blk else 0, "blk"),
                (2, "mix"),
                (2, "shift"),
                (1, "scale"),
                (1, "tanh_sum"),
                (1, "gate"),
                (1, "relu"),
                (1, "where"),
                (1, "clamp"),
                (1, "hard_gate"),
                (1, "hard_where"),
            ]
        )
        if kind == "linear":
            return f"torch.tanh(self.l{self.ch.integer(0, 2)}({a}))"
        if kind == "seq":
            return f"self.seq({a})"
        if kind == "blk":
            return f"torch.tanh(blk({a}))"
        if kind == "mix":
            c = self.pick((0.5, 0.25, 0.75))
            return f"{a} * {c} + {b} * {1 - c}"
        if kind == "shift":
            return f"{a} {self.pick(('+ 1.0', '- 1.0', '+ 0.5', '- 0.5'))}"
        if kind == "scale":
            return f"{a} * {self.pick((0.5, -0.5, 0.9, -1.0))}"
        if kind == "tanh_sum":
            return f"torch.tanh({a} + {b})"
        if kind == "gate":
            return f"{a} * torch.sigmoid({b})"
        if kind == "relu":
            return f"torch.relu({a}) - {self.pick((0.25, 0.5))}"
        if kind == "where":
            return f"torch.where({a} > 0.0, {a}, {b})"
        if kind == "hard_gate":  # gating by arithmetic with a 0/1 gate (GateToBranch)
            g, i = f"({b}.sum() > 0).float()", self.ch.integer(0, 2)
            return self.pick([f"{a} + {g} * torch.tanh(self.l{i}({a}))",
                              f"{g} * torch.tanh(self.l{i}({a})) + (1 - {g}) * {a}"])
        if kind == "hard_where":
            i = self.ch.integer(0, 2)
            return f"torch.where({b}.mean() > 0, torch.tanh(self.l{i}({a})), {a})"
        return f"{a}.clamp(-{self.pick((0.5, 1.0))}, {self.pick((0.5, 1.0))})"

    def gen_assign(self, ctx: Ctx) -> Line:
        return Line(f"{self.pick(TENSORS)} = {self.tensor_expr(ctx)}")

    def gen_counter(self, ctx: Ctx) -> Line:
        forms = ["n = n + 1", "k += 2", "n += 1", "k = k + 1", "n = n + k"]
        if self.features.int_from_tensor and self.flag(30):
            v = self.pick(TENSORS)
            return Line(self.pick([f"n += int({v}.sum() > 0)", f"k = k + int({v}.argmax())"]))
        return Line(self.pick(forms))

    def gen_inplace(self, ctx: Ctx) -> Line:
        v = self.pick(MUTABLE_TENSORS)
        return Line(
            self.pick([f"{v} += 0.5", f"{v}.mul_(0.5)", f"{v}[{v} < 0] = 0.0", f"{v} -= 0.25"])
        )

    def return_value(self) -> str:
        pool = ["x", "y", "z", "n", "k", "n > 2", "None", "x.sum()"]
        items = [self.pick(pool) for _ in range(self.ch.integer(1, 3))]
        shape = self.weighted(
            [
                (4, "tuple"),
                (1, "single"),
                (1 if self.features.container_returns else 0, "list"),
                (1 if self.features.container_returns else 0, "dict"),
            ]
        )
        if shape == "single":
            return items[0]
        if shape == "list":
            return "[" + ", ".join(items) + "]"
        if shape == "dict":
            return "{" + ", ".join(f'"r{i}": {v}' for i, v in enumerate(items)) + "}"
        return ", ".join(items) + ("," if len(items) == 1 else "")

    # ---- conditions

    def tensor_atom(self, ctx: Ctx) -> str:
        """A comparison on tensor values; thresholds are chosen to split both ways."""
        v = self.pick(TENSORS)
        kind = self.weighted(
            [
                (3, "sum"),
                (2, "mean"),
                (2, "elem"),
                (1, "max"),
                (1, "norm"),
                (1, "bool"),
                (1, "min"),
                (1, "argmax"),
            ]
        )
        if kind == "sum":
            return f"{v}.sum() > {self.pick((0.0, 0.5, -0.5, 1.0, -1.0))}"
        if kind == "mean":
            return f"{v}.mean() < {self.pick((0.0, 0.05, -0.05))}"
        if kind == "elem":
            if ctx.loop_vars and self.flag(50):
                idx = self.pick(ctx.loop_vars)
            else:
                idx = self.ch.integer(0, 7)
            return f"{v}[0, {idx}] > {self.pick((0.0, 0.1, -0.1))}"
        if kind == "max":
            return f"{v}.max().item() > {self.pick((0.5, 0.3, 0.7))}"
        if kind == "norm":
            return f"float({v}.norm()) < {self.pick((1.5, 1.0, 2.0))}"
        if kind == "bool":
            return f"bool({v}.sum() > {self.pick((0.0, 0.5, -0.5))})"
        if kind == "min":
            return f"{v}.min() < {self.pick((-0.5, -0.3, -0.7))}"
        return f"int({v}.argmax()) < {self.ch.integer(3, 5)}"

    def counter_atom(self) -> str:
        c = self.pick(COUNTERS)
        return self.pick(
            [f"{c} > {self.ch.integer(0, 3)}", f"{c} % 2 == 0", f"n + k < {self.ch.integer(2, 6)}"]
        )

    def condition(self, ctx: Ctx) -> Cond:
        """A tensor atom, a counter atom, or ``and``/``or``/``not`` of atoms."""
        kind = self.weighted(
            [
                (6, "tensor"),
                (2, "counter"),
                (1, "and"),
                (1, "or"),
                (1, "not"),
            ]
        )
        if kind == "tensor":
            return Cond(self.tensor_atom(ctx), True)
        if kind == "counter":
            return Cond(self.counter_atom(), False)
        if kind == "not":
            return Cond(f"not ({self.tensor_atom(ctx)})", True)
        left = Cond(self.tensor_atom(ctx), True)
        right = (
            Cond(self.counter_atom(), False) if self.flag(40) else Cond(self.tensor_atom(ctx), True)
        )
        if self.flag(50):
            left, right = right, left
        return Cond(f"{left.src} {kind} {right.src}", True)

    # ---- compound statements

    def inner(self, ctx: Ctx, **changes) -> Ctx:
        return replace(ctx, depth=ctx.depth + 1, **changes)

    def gen_if(self, ctx: Ctx) -> If:
        sub = self.inner(ctx)
        arms = [(self.condition(ctx), self.block(sub, arm=True))]
        for _ in range(self.ch.integer(0, 2)):
            if self.budget <= 0:
                break
            self.budget -= 1
            arms.append((self.condition(ctx), self.block(sub, arm=True)))
        orelse = None
        if self.budget > 0 and self.flag(50):
            self.budget -= 1
            orelse = self.block(sub, arm=True)
        return If(arms, orelse)

    def gen_while(self, ctx: Ctx) -> While:
        cond = Cond(self.tensor_atom(ctx), True)
        if self.flag(30):
            cond = Cond(f"not ({cond.src})", True)
        fresh = self.flag(50)
        if fresh:
            counter = f"w{self.fresh_counters}"
            self.fresh_counters += 1
            limit = self.ch.integer(1, 5)
        else:
            counter, limit = self.pick(COUNTERS), self.ch.integer(2, 8)
        counter_first = self.flag(30)
        body = self.block(self.inner(ctx, in_loop=True), arm=False)
        if ctx.depth + 1 < self.max_depth and self.flag(35):  # data-dependent exit / return
            body.append(If([(self.condition(ctx), [self.terminator(replace(ctx, in_loop=True))])]))
        return While(cond, counter, limit, fresh, counter_first, body)

    def gen_for(self, ctx: Ctx) -> For:
        var = LOOP_VARS[len(ctx.loop_vars)]
        if self.features.dynamic_range and self.flag(25):
            iterable = "range(k % 3 + 1)"
        else:
            iterable = f"range({self.ch.integer(1, 4)})"
        sub = self.inner(ctx, loop_vars=ctx.loop_vars + (var,), in_loop=True)
        return For(var, iterable, self.loop_body(sub))

    def gen_blocks(self, ctx: Ctx) -> For:
        sub = self.inner(ctx, blk=True, in_loop=True)
        return For("blk", "self.blocks", self.loop_body(sub))

    def loop_body(self, ctx: Ctx) -> list:
        body = self.block(ctx)
        if ctx.depth < self.max_depth and self.flag(50):  # ``if <cond>: break/continue/return``
            body.append(If([(self.condition(ctx), [self.terminator(ctx)])]))
        return body


# --------------------------------------------------------------------------- rendering

HEADER = '''"""Program generated by tests/program_gen.py."""

import torch
from torch import nn


class {name}(nn.Module):
    """A random dynamic network."""

    def __init__(self):
        super().__init__()
        torch.manual_seed({seed})
        self.l0 = nn.Linear(8, 8)
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)
        self.seq = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
'''

PROBE = """        self.probes = {}

    def _probe(self, idx, cond):
        value = bool(cond)
        self.probes.setdefault(idx, set()).add(value)
        return value
"""

FORWARD = """
    def forward(self, x):
        y = torch.tanh(self.l0(x))
        z = x * 0.5
        n = 0
        k = 1
"""


class Renderer:
    """Renders a ``Program`` to module source; optionally instruments conditions."""

    def __init__(self, probe: bool = False):
        self.probe = probe
        self.probe_tensor: list[bool] = []
        self.lines: list[str] = []

    def module(self, program: Program) -> str:
        out = HEADER.format(name=program.name, seed=program.seed)
        if self.probe:
            out += PROBE
        return out + FORWARD + self.forward_body(program)

    def forward_body(self, program: Program) -> str:
        """The generated part of ``forward`` (after the fixed initialisations)."""
        self.lines, self.probe_tensor = [], []
        self.body(program.body, 2)
        self.emit(f"return {FINAL_RETURN}", 2)
        return "\n".join(self.lines) + "\n"

    def emit(self, text: str, level: int):
        self.lines.append("    " * level + text)

    def cond(self, cond: Cond) -> str:
        if not self.probe:
            return cond.src
        self.probe_tensor.append(cond.tensor)
        return f"self._probe({len(self.probe_tensor) - 1}, {cond.src})"

    def body(self, stmts: list, level: int):
        for s in stmts:
            self.stmt(s, level)

    def stmt(self, s, level: int):
        if isinstance(s, Line):
            self.emit(s.src, level)
        elif isinstance(s, Return):
            self.emit(f"return {s.value}", level)
        elif isinstance(s, If):
            for i, (cond, arm) in enumerate(s.arms):
                self.emit(f"{'if' if i == 0 else 'elif'} {self.cond(cond)}:", level)
                self.body(arm, level + 1)
            if s.orelse:
                self.emit("else:", level)
                self.body(s.orelse, level + 1)
        elif isinstance(s, While):
            bound = f"{s.counter} < {s.limit}"
            both = f"{bound} and {s.cond.src}" if s.counter_first else f"{s.cond.src} and {bound}"
            if s.fresh:
                self.emit(f"{s.counter} = 0", level)
            self.emit(f"while {self.cond(Cond(both, True))}:", level)
            self.emit(f"{s.counter} += 1", level + 1)
            self.body(s.body, level + 1)
        elif isinstance(s, For):
            self.emit(f"for {s.var} in {s.iterable}:", level)
            self.body(s.body, level + 1)
        else:
            raise TypeError(f"unknown statement {s!r}")


# --------------------------------------------------------------------------- entry points


def programs(features: Features | None = None, max_stmts: int = 8):
    """Hypothesis strategy of ``Program`` trees."""
    from hypothesis import strategies as st

    @st.composite
    def _programs(draw):
        return Builder(HypothesisChooser(draw), features, max_stmts=max_stmts).program()

    return _programs()


def random_program(seed: int, features: Features | None = None, max_stmts: int = 8) -> Program:
    """A program from a seeded ``random.Random`` (no hypothesis needed)."""
    return Builder(RandomChooser(seed), features, max_stmts=max_stmts).program()


_module_ids = itertools.count()


def load_source(source: str, directory: str | Path, class_name: str = "GenNet"):
    """Write ``source`` to a real file (``inspect.getsource`` needs one), import it, and
    return the class ``class_name``.  Every call gets a fresh, unique module name."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    name = f"dycomp_genprog_{next(_module_ids)}_{digest}"
    path = Path(directory) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return getattr(module, class_name)


def make_inputs(seed: int, count: int = 8):
    """``count`` seeded (1, 8) inputs with varied scales."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(1, 8, generator=g) * INPUT_SCALES[i % len(INPUT_SCALES)] for i in range(count)
    ]


def main(argv: list[str]) -> None:
    """Print ``COUNT`` programs starting at ``SEED``."""
    seed = int(argv[0]) if argv else 0
    count = int(argv[1]) if len(argv) > 1 else 1
    for s in range(seed, seed + count):
        print(f"# ---- random_program({s})")
        print(random_program(s).source())


if __name__ == "__main__":
    main(sys.argv[1:])
