"""Answer a batch of requests exactly: every answer equals the answer to that request alone.

A dynamic network's decisions may be coupled across a batch (`if p.max() > t:` decides once
for all rows), so requests are never concatenated here: `dycomp.runtime.batching.run_batch`
knows which artifacts can run a batch as one call and how to split the rest by path.
"""

from __future__ import annotations

import logging

from dycomp.runtime.batching import run_batch
from dycomp.runtime.controlflow import manifest_view

log = logging.getLogger(__name__)


def run_requests(art, requests: list[tuple], return_path: bool = False) -> list:
    """The answers to `requests` (tuples of input arrays in signature order), in order: what
    `art.run(*req, return_path=return_path)` returns, or the exception that request raised.
    One failing request never fails the others."""
    if len(requests) > 1:
        try:
            return list(run_batch(art, requests, return_path=return_path, errors="return"))
        except Exception as e:  # one bad request in the batch: answer each one alone
            log.debug("run_batch failed (%s: %s); answering one at a time", type(e).__name__, e)
    return [_run_one(art, req, return_path) for req in requests]


def _run_one(art, req: tuple, return_path: bool):
    try:
        return art.run(*req, return_path=return_path)
    except Exception as e:  # the model's own error (ModelError, IndexError ...) is the answer
        return e


def answer_batch(art, items: list[tuple[tuple, bool]]) -> list:
    """Answers to (arrays, want_path) items, in order: requests that want the path run
    together with `return_path=True`, the others without (a path costs a traced run)."""
    answers: list = [None] * len(items)
    for want in (False, True):
        idx = [i for i, (_, w) in enumerate(items) if w == want]
        if idx:
            for i, a in zip(idx, run_requests(art, [items[i][0] for i in idx], want)):
                answers[i] = a
    return answers


def path_label(art, path: list) -> str | None:
    """The decisions a path took (`exit 2`, `5 steps`), or None if it cannot be labelled."""
    try:
        return manifest_view(art.manifest).label(path)
    except Exception as e:  # display only: never fail an answer for its label
        log.debug("no path label: %s", e)
        return None
