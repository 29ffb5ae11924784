"""Serve dycomp artifacts on Ray Serve: `dycomp serve ART` or, in Python,
`serve.run(dycomp.serve.deployment("net.dyc"))`. Needs `pip install 'dycomp[serve]'`.

Importing this package imports neither Ray nor torch; the replicas import only
`dycomp.runtime`, numpy and Ray.
"""

from __future__ import annotations

from dycomp.serve.config import ServeConfig
from dycomp.serve.runner import run_requests

__all__ = ["ServeConfig", "deployment", "run_requests"]


def deployment(artifact, *, replicas: int = 1, max_batch: int = 8, batch_wait_ms: float = 2.0,
               **options):
    """A Ray Serve deployment of `artifact`, bound to it (a Ray Serve application): pass it
    to `serve.run`, or to your own deployment's `bind()` and call it through its handle
    (`await handle.infer.remote(x)`). Other options: the fields of `ServeConfig`."""
    from dycomp.serve.deployment import build

    return build(ServeConfig(artifact, replicas=replicas, max_batch=max_batch,
                             batch_wait_ms=batch_wait_ms, **options))
