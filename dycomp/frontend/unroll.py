"""Unrolling a counted loop whose body is not uniform across iterations.

A `for i in range(N)` loop with a static `N` that may leave early is first traced
as a host loop (its body traced once, `i` a host value). That fails, or would
carry values of another type, when the body indexes containers of unlike modules
by `i` (`self.stages[i]` with stages of different widths) or when a loop-carried
value changes type between iterations (an image tensor becoming a list of
features). Then the capture state is rolled back and the loop is unrolled, `i`
a Python int at every iteration. Uniform bodies keep one host loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_UNROLL = 64  # iterations; longer non-uniform loops keep the host loop's error


class NotUniform(Exception):
    """Raised inside a trial host loop whose body is not uniform (carried values change
    type, or it selects a list element by the counter)."""


@dataclass
class Checkpoint:
    """What the capture state was before a trial host loop."""

    block: list
    block_len: int
    blocks: list
    scopes: list
    regions: list
    exit_log: int
    resolved: set
    maybe_undef: set
    predeclare: int
    call_depth: dict
    journal: int


def checkpoint(t) -> Checkpoint:
    t.close()
    return Checkpoint(t.blocks[-1], len(t.blocks[-1]), list(t.blocks), list(t.scopes),
                      list(t.regions), len(t.exit_log), set(t.resolved), set(t.maybe_undef),
                      len(t.predeclare), dict(t.call_depth), len(t.journal))


def rollback(t, cp: Checkpoint) -> None:
    """Forget everything traced since `cp` (statements, regions, exits, scopes)."""
    t.undo(cp.journal)
    t.open = None
    for name in list(t.regions):
        if name not in cp.regions:
            del t.regions[name]
    del cp.block[cp.block_len:]
    t.blocks, t.scopes = cp.blocks, cp.scopes
    del t.exit_log[cp.exit_log:]
    del t.predeclare[cp.predeclare:]
    t.resolved, t.maybe_undef, t.call_depth = cp.resolved, cp.maybe_undef, cp.call_depth


def can_unroll(iterable) -> bool:
    return isinstance(iterable, range) and 0 < len(iterable) <= MAX_UNROLL


def host_or_unrolled(t, host_loop, unrolled, get, set_):
    """Trace `host_loop()`; if its body is not uniform, roll back and run `unrolled()`."""
    init = get()
    cp = checkpoint(t)
    try:
        return host_loop()
    except Exception as e:  # noqa: BLE001 - any failure of the trial: unroll instead
        log.debug("counted loop unrolled (body not uniform: %s)", e)
        rollback(t, cp)
    set_(init)
    return unrolled()


def type_changed(old, new) -> bool:
    """Whether loop-carried kinds (ops._kind) differ in more than symbolic dimensions or
    a first definition inside the loop."""
    if old == new or old == ("U",):
        return False
    if old[0] != new[0]:
        return True
    if old[0] == "T":
        return old[1] != new[1] or len(old[2]) != len(new[2])
    if old[0] == "C":
        return len(old) != len(new) or any(type_changed(a, b) for a, b in zip(old[1:], new[1:]))
    return old[0] == "S"
