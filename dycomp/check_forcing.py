"""Teacher forcing for the path-covering self-check (`dycomp/check_paths.py`): the same
decision, identified by its source line and its occurrence there (the k-th read at
that line in one run), answered as told in eager PyTorch and in the host program.

Eager decisions are forced where Python reads them: `bool(tensor)`, and a Python
comparison on a scalar read out of a tensor at the line of a host decision
(`tok.item() == eos`, `halting.item() > t`: tensor-conditions computes these on the
tensor, the host reads `bool(tc)` at that line). Such a read returns a `_ForcedInt` /
`_ForcedFloat`: the real value, whose first comparison (or truth test) answers as the
forcer says and is recorded; afterwards it is a plain number.
"""

from __future__ import annotations

import operator
import os
import re
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# a host decision: `v3 = bool(v2)  # nested_if.py:63`
_DECISION = re.compile(r"^(\s*)(\w+) = bool\((\w+)\)  # (\S+:\d+)$", re.M)
_SCALAR_READS = {"item", "__int__", "__float__", "__index__"}
MAX_DECISIONS = 10_000  # per run: a forced loop that no longer ends
_SKIP = (os.path.dirname(torch.__file__), os.path.dirname(__file__))


class Runaway(Exception):
    """A forced run read more than `MAX_DECISIONS` decisions."""


# a scalar read `v16 = v15.item()`, and a host comparison `v17 = (v16 > 5.0)  # f.py:81`
_SCALAR = re.compile(r"^\s*(\w+) = \w+\.item\(\)  # ", re.M)
_CAST = re.compile(r"^\s*(\w+) = (?:int|float)\((\w+)\)  # ", re.M)  # `v7 = int(v6)`
_COMPARE = re.compile(r"^(\s*)(\w+) = (\(.*\))  # (\S+:\d+)$", re.M)
_RANGE = re.compile(r"^\s*(\w+) = range\(\d+\)\[(\w+)\]  # ", re.M)  # a switch's index


def _scalar_compares(source: str) -> list:
    """Host decisions `v = (<comparison of a scalar read out of a tensor>)` that an `if`
    tests (tensor-conditions off: `optimize=False`), as regex matches."""
    scalars = set(_SCALAR.findall(source))
    scalars |= {v for v, x in _CAST.findall(source) if x in scalars}
    scalars |= {v for v, x in _RANGE.findall(source) if x in scalars}
    return [m for m in _COMPARE.finditer(source)
            if set(re.findall(r"\w+", m.group(3))) & scalars
            and re.search(rf"^\s*if {m.group(2)}:$", source, re.M)]


def decision_sites(source: str) -> tuple[set, set]:
    """The source lines (`file.py:L`) of a host program's decisions, and of those a
    comparison on a scalar read out of a tensor in the host itself."""
    scalar = {m.group(4) for m in _scalar_compares(source)}
    return {m.group(4) for m in _DECISION.finditer(source)} | scalar, scalar


def reused_sites(source: str) -> set:
    """Decision sites whose tensor the host also passes on as a value (`t and k < 6` is
    `t` itself when `t` is false): forcing the read would not force the value."""
    return {m.group(4) for m in _DECISION.finditer(source)
            if len(re.findall(rf"\b{m.group(3)}\b", source)) > 2}


def forced_source(source: str) -> str:
    """The host program with each decision read going through `_F(site, value)`."""
    for m in reversed(_scalar_compares(source)):
        s, e = m.span()
        source = source[:s] + f"{m.group(1)}{m.group(2)} = _F('{m.group(4)}', " \
            f"{m.group(3)})  # {m.group(4)}" + source[e:]
    return _DECISION.sub(r"\1\2 = _F('\4', bool(\3))", source)


class Forcer:
    """Answers decision reads by (site, occurrence) from `plan`; records what was read.
    `sites`: the decision sites that count (None: all); others answer naturally.
    `flip(site, k, natural)`: for a decision the plan does not name, whether to answer
    the other way (eager only: what it answered is then the compiled side's plan)."""

    def __init__(self, plan: dict, sites: set | None = None, flip=None, aside: set = ()):
        self.plan, self.sites, self.flip, self.aside = plan, sites, flip, aside
        self.counts, self.taken, self.flipped = Counter(), [], []
        self.natural: dict = {}  # (site, k) -> the answer before forcing
        self.set_aside: list = []  # (site, k, value) read at `aside` sites, not forced

    def __call__(self, site: str, value: bool) -> bool:
        if self.sites is not None and site not in self.sites:
            if site in self.aside:
                self.set_aside.append((site, self.counts[site], bool(value)))
                self.counts[site] += 1
            return bool(value)
        k = self.counts[site]
        self.counts[site] += 1
        self.natural[site, k] = bool(value)
        if (site, k) in self.plan:
            value = self.plan[site, k]
        elif self.flip is not None and self.flip(site, k, bool(value)):
            value = not value
            self.flipped.append((site, k, value))
        self.taken.append((site, k, bool(value)))
        if len(self.taken) > MAX_DECISIONS:
            raise Runaway(site)
        return bool(value)

    def answers(self) -> dict:
        """Every decision read and its answer: the other side's plan."""
        return {(s, k): v for s, k, v in self.taken}

    def opposite(self, eager: Forcer) -> set:
        """Sites where the two sides, reading the same decision, answered differently
        before forcing: not the same decision (the host tests its negation, say)."""
        return {key[0] for key in self.natural.keys() & eager.natural.keys()
                if self.natural[key] != eager.natural[key]}

    def follows(self, eager: Forcer) -> bool:
        """This (compiled) run read `eager`'s decisions in the same order (decisions
        eager never reads, a gate multiplied in say, may come between)."""
        return [t for t in self.taken if (t[0], t[1]) in self.plan] == eager.taken


class EagerForcing(TorchFunctionMode):
    """Eager decisions answer as the forcer says for their source line: `bool(tensor)`
    anywhere, a comparison on a scalar read at one of `scalar_sites`."""

    def __init__(self, forcer: Forcer, scalar_sites: set = frozenset()):
        super().__init__()
        self.forcer, self.scalar_sites = forcer, scalar_sites

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name == "__bool__":
            return self.forcer(_caller_site(), out)
        if name in _SCALAR_READS and self.scalar_sites and type(out) in _FORCED:
            site = _caller_site()
            if site in self.scalar_sites:
                return _FORCED[type(out)](out, self.forcer, site)
        return out


def _caller_site() -> str:
    """`file.py:line` of the user code that read the decision."""
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename.startswith(_SKIP):
        f = f.f_back
    return "?" if f is None else f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


class _Forced:
    """A scalar read whose first comparison is the decision (see the module docstring)."""

    def __new__(cls, value, forcer: Forcer, site: str):
        self = super().__new__(cls, value)
        self._decide = lambda natural: forcer(site, natural)
        return self

    def _compare(self, op, other):
        plain = self.__class__.__mro__[2](self)
        natural = op(plain, other)
        decide, self._decide = self._decide, None
        return natural if decide is None or not isinstance(natural, bool) else decide(natural)

    def __eq__(self, other):
        return self._compare(operator.eq, other)

    def __ne__(self, other):
        return self._compare(operator.ne, other)

    def __lt__(self, other):
        return self._compare(operator.lt, other)

    def __le__(self, other):
        return self._compare(operator.le, other)

    def __gt__(self, other):
        return self._compare(operator.gt, other)

    def __ge__(self, other):
        return self._compare(operator.ge, other)

    def __bool__(self):
        return self._compare(lambda a, _: a != 0, None)

    def __hash__(self):
        return hash(self.__class__.__mro__[2](self))


class _ForcedInt(_Forced, int):
    pass


class _ForcedFloat(_Forced, float):
    pass


_FORCED = {int: _ForcedInt, float: _ForcedFloat}


def plain(out):
    """`out` with forced scalars turned back into plain numbers."""
    return tree_map(lambda x: x.__class__.__mro__[2](x) if isinstance(x, _Forced) else x, out)
