"""The Ray Serve deployment of a dycomp artifact: each replica loads the artifact with
`dycomp.runtime` (numpy and ONNX Runtime; never torch), batches requests with
`@serve.batch` and answers each one exactly (`runner.run_requests`).

HTTP: POST a request (see `protocol`), `?path=1` for the path; `GET /-/info` describes the
replica. Ray's proxy answers `GET /-/healthz`; Ray calls `check_health` on each replica.
Python: a `DeploymentHandle` calls `infer(*arrays, return_path=False)`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
import time

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from dycomp.serve import protocol
from dycomp.serve.config import ServeConfig
from dycomp.serve.runner import answer_batch, path_label

log = logging.getLogger(__name__)


def _json(doc: dict, status: int = 200) -> Response:
    return Response(json.dumps(doc), status_code=status, media_type="application/json")


class DycompModel:
    """One replica: the loaded artifact and its batch queue."""

    def __init__(self, config: ServeConfig):
        from dycomp import runtime

        self.config = config
        kw = {} if config.threads is None else {"threads": config.threads}
        self.art = runtime.load(config.artifact, trust_native=config.trust_native,
                                public_key=config.public_key, **kw)
        if not hasattr(self.art, "signature"):
            raise runtime.ArtifactError(f"{config.artifact}: an artifact with selectors "
                                        "cannot be served yet; save one sub-network")
        self._running: dict[int, float] = {}  # model calls in flight -> their start
        self._ids = itertools.count()
        self._batched.set_max_batch_size(config.max_batch)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)
        log.info("replica %d serves %s %s", os.getpid(), config.artifact, self.art.signature)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _batched(self, items: list[tuple[tuple, bool]]) -> list:
        return await self._run(items)

    async def _answer(self, arrays: tuple, want_path: bool):
        if self.config.max_batch > 1:
            return await self._batched((arrays, want_path))
        (answer,) = await self._run([(arrays, want_path)])
        return answer

    async def _run(self, items: list) -> list:
        """`answer_batch` in a worker thread, timed for the health check."""
        key = next(self._ids)
        self._running[key] = time.monotonic()
        try:
            return await asyncio.to_thread(answer_batch, self.art, items)
        finally:
            del self._running[key]

    async def infer(self, *arrays, return_path: bool = False):
        """Outputs for numpy inputs (with the path if asked), batched like HTTP requests;
        raises ValueError for inputs that do not match the signature."""
        from dycomp.runtime.artifact import check_inputs

        answer = await self._answer(tuple(check_inputs(self.art.signature, arrays)),
                                    return_path)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET" and request.url.path.rstrip("/").endswith("/-/info"):
            return _json(self.info())
        if request.method != "POST":
            return _json(protocol.error_body("POST the inputs (GET /-/info describes the "
                                             "model)", self.art.signature), 405)
        try:
            req = await self._parse(request)
        except protocol.RequestError as e:
            return _json(protocol.error_body(str(e), self.art.signature), e.status)
        answer = await self._answer(req.arrays, req.want_path)
        if isinstance(answer, BaseException):
            return _json(protocol.error_body(f"{type(answer).__name__}: {answer}"), 422)
        outputs, path = answer if req.want_path else (answer, None)
        label = path_label(self.art, path) if path is not None else None
        if req.npz:
            return Response(protocol.answer_npz(outputs, path, label),
                            media_type="application/x-npz")
        return Response(protocol.answer_json(outputs, path, label),
                        media_type="application/json")

    async def _parse(self, request: Request) -> protocol.Request:
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length")
        protocol.check_size(int(length) if length and length.isdigit() else None, limit)
        body = await request.body()
        return protocol.parse_request(body, request.headers.get("content-type"),
                                      self.art.signature,
                                      want_path=protocol.truthy(request.query_params.get("path")),
                                      limit=limit)

    def info(self) -> dict:
        """The artifact this replica serves, its signature, batching, and its process (the
        load test kills one by pid; `torch` shows that the replica never imported it)."""
        return {"artifact": str(self.config.artifact), "signature": str(self.art.signature),
                "max_batch": self.config.max_batch, "batch_wait_ms": self.config.batch_wait_ms,
                "pid": os.getpid(), "torch": "torch" in sys.modules}

    def check_health(self) -> None:
        """Ray's periodic health check: the artifact is loaded, and no model call has run
        longer than `stuck_after_s` (a hung call never answers: Ray restarts the replica,
        and the requests it held are retried or fail with 5xx, never answered wrongly)."""
        if getattr(self.art, "program", None) is None:
            raise RuntimeError(f"{self.config.artifact}: artifact not loaded")
        started = min(self._running.values(), default=None)
        if started is not None and time.monotonic() - started > self.config.stuck_after_s:
            raise RuntimeError(f"{self.config.artifact}: a model call has run for "
                               f"{time.monotonic() - started:.0f} s (over --stuck-after-s "
                               f"{self.config.stuck_after_s:g})")


def build(config: ServeConfig):
    """The deployment of `config`, bound to it: a Ray Serve application to `serve.run` or
    to pass to another deployment's `bind`."""
    dep = serve.deployment(DycompModel, name=config.name).options(
        num_replicas=config.replicas,
        max_ongoing_requests=config.max_ongoing(),
        ray_actor_options={"num_cpus": config.replica_cpus},
        health_check_period_s=config.health_period_s,
    )
    return dep.bind(config)
