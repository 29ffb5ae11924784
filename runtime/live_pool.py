"""At most N sub-networks of a supernet with live ONNX Runtime sessions (no onnxruntime
import here: `dycomp.runtime.shared_sessions` creates and releases them)."""

from __future__ import annotations

import threading
from collections import OrderedDict


def release(model) -> None:
    """Release the lazy sessions of a sub-network (a runtime Artifact or a CompiledModel)."""
    executor = getattr(getattr(model, "program", None), "executor", None)
    if hasattr(executor, "release"):
        executor.release()


def is_live(model) -> bool:
    """Whether a sub-network holds live sessions (an eager one always does)."""
    executor = getattr(getattr(model, "program", None), "executor", None)
    return getattr(executor, "live", True)


class LivePool:
    """The sub-networks allowed live sessions: at most `limit` (None: all), the least
    recently used released first."""

    def __init__(self, limit: int | None):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"max_live_subnets must be a positive int or None, got {limit!r}")
        self.limit = limit
        self._order: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def use(self, key, model) -> None:
        """`model` (the sub-network `key`) is about to run: most recent; release beyond
        the limit."""
        with self._lock:
            self._order.pop(key, None)
            self._order[key] = model
            out = []
            while self.limit is not None and len(self._order) > self.limit:
                out.append(self._order.popitem(last=False)[1])
        for m in out:
            release(m)
