"""Start a served artifact: Ray (local, or an existing cluster), Serve's HTTP proxy, the
deployment; then wait until SIGINT/SIGTERM and shut Serve down gracefully."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass

from dycomp.serve.config import ServeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpConfig:
    """Where Serve listens, and which Ray to use: address None starts a local Ray."""

    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    route_prefix: str = "/"
    num_cpus: int | None = None  # a local Ray's CPUs (default: the machine's)

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535; got {self.port}")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route prefix must start with '/'; got {self.route_prefix!r}")


def start(config: ServeConfig, http: HttpConfig = HttpConfig()) -> str:
    """Deploy `config` behind Serve's proxy and return the URL it answers on; the
    application keeps running until `stop()`. Without an address, a new local Ray
    (`address="local"`: never a cluster found in the environment)."""
    import ray
    from ray import serve

    from dycomp.serve.deployment import build

    if not ray.is_initialized():
        if http.address is None:
            kw = {"num_cpus": http.num_cpus} if http.num_cpus else {}
            ray.init(address="local", include_dashboard=False, log_to_driver=False, **kw)
        else:
            ray.init(address=http.address, log_to_driver=False)
    serve.start(http_options={"host": http.host, "port": http.port})
    serve.run(build(config), name=config.name, route_prefix=http.route_prefix)
    url = f"http://{http.host}:{http.port}{http.route_prefix.rstrip('/')}/"
    log.info("serving %s at %s", config.artifact, url)
    return url


def stop(name: str = "dycomp", shared: bool = False) -> None:
    """Shut Serve down (replicas finish their requests first) and leave Ray. On a `shared`
    cluster (joined with an address) only the application `name` is deleted: other
    applications there keep running."""
    import ray
    from ray import serve

    if shared:
        serve.delete(name)
    else:
        serve.shutdown()
    if ray.is_initialized():
        ray.shutdown()


def serve_forever(config: ServeConfig, http: HttpConfig = HttpConfig(), on_ready=None) -> None:
    """start(), call `on_ready(url)`, block until SIGINT or SIGTERM, then stop(). The
    handlers are installed after Ray starts, which installs its own."""
    url = start(config, http)
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set())
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_ready is not None:
            on_ready(url)
        while not done.wait(0.5):
            pass
        log.info("signal received: shutting down")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stop(config.name, shared=http.address is not None)
