"""Pass infrastructure: a pass is a small named unit with a declared contract."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from dycomp.errors import DycompError, PassError

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    graph: object
    modified: bool


class Pass:
    """Base class. `inplace = True` passes mutate the DynGraph they are given and return it."""

    name = "pass"
    inplace = True

    def __call__(self, graph) -> PassResult:
        raise NotImplementedError


def run_passes(graph, passes, verify: bool | None = None):
    """Run passes in order; verify after each in debug mode (DYCOMP_DEBUG) or when asked.

    A failure names the pass and the passes that ran before it.
    """
    if verify is None:
        verify = bool(os.environ.get("DYCOMP_DEBUG"))
    ran: list[str] = []
    for p in passes:
        try:
            result = p(graph)
            if verify:
                result.graph.verify()
        except DycompError as e:
            if isinstance(e, PassError):
                raise
            raise PassError(f"pass {p.name} failed (after {ran or 'capture'}): {e}") from e
        except Exception as e:
            raise PassError(f"pass {p.name} crashed (after {ran or 'capture'}): "
                            f"{type(e).__name__}: {e}") from e
        graph = result.graph
        ran.append(p.name)
        log.debug("pass %s: modified=%s", p.name, result.modified)
    return graph
