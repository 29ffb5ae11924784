"""`dycomp serve ART`: serve an artifact over HTTP on Ray Serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from dycomp.serve.config import ServeConfig

_PLAIN = {"markup": False, "highlight": False, "soft_wrap": True}

_HELP = """\
Serve an artifact on Ray Serve: replicas that load it with dycomp.runtime (no PyTorch),
batch requests with Ray Serve's batching (every answer equals the answer to that request
alone), and answer HTTP. POST {"inputs": {"x": [[...]]}} (or a positional list, or an .npz
body with Content-Type application/octet-stream) to the URL printed; add ?path=1 for the
regions run and the decisions taken. GET /-/healthz checks the server, GET /-/info the
model. Bad inputs get HTTP 400 {"error": ..., "expected": <signature>}; bodies over
--max-body-mb get 413. Starts a local Ray unless --address names a cluster (where the
artifact must be at the same path on every node). Needs `pip install 'dycomp[serve]'`.
"""

_EPILOG = """\
examples:
  dycomp serve net.dyc --replicas 2 --max-batch 8 --port 8000
  curl -s localhost:8000/?path=1 -d '{"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}}'
"""


def add_serve(sub, formatter) -> None:
    """Register `serve` on the `dycomp` subcommand parser."""
    p = sub.add_parser("serve", help="serve an artifact over HTTP on Ray Serve",
                       description=_HELP, epilog=_EPILOG, formatter_class=formatter)
    p.add_argument("artifact", metavar="PATH", type=Path, help="artifact directory")
    p.add_argument("--replicas", type=int, default=1, metavar="N", help="replica processes")
    p.add_argument("--max-batch", type=int, default=8, metavar="B",
                   help="requests per batch (1: no batching; default 8)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, metavar="W",
                   help="how long a batch waits to fill (default 2 ms)")
    p.add_argument("--port", type=int, default=8000, metavar="P", help="HTTP port (8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--address", metavar="RAY",
                   help="join this Ray cluster (e.g. auto, ray://head:10001) instead of "
                        "starting a local Ray")
    p.add_argument("--threads", type=int, metavar="N",
                   help="onnxruntime threads per subgraph in each replica")
    p.add_argument("--replica-cpus", type=float, default=1.0, metavar="C",
                   help="Ray CPUs reserved per replica (default 1)")
    p.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB",
                   help="largest request body (and unpacked .npz) in MiB (default 16)")
    p.add_argument("--max-ongoing", type=int, default=64, metavar="N",
                   help="requests a replica accepts at once; more wait in Ray's router "
                        "(default 64)")
    p.add_argument("--trust-native", action="store_true",
                   help="allow a TVM artifact's native code (see `dycomp run --help`)")
    p.add_argument("--public-key", type=Path, metavar="KEY.pub",
                   help="require a valid signature.json by this Ed25519 public key")
    p.add_argument("--stuck-after-s", type=float, default=120.0, metavar="S",
                   help="a replica whose model call has run longer than S seconds fails its "
                        "health check and Ray restarts it (default 120)")
    p.set_defaults(command_fn=serve_command, make_config=_serve_config)


def _serve_config(ns: argparse.Namespace):
    from dycomp.cli import UsageError
    from dycomp.serve.app import HttpConfig

    try:
        return (ServeConfig(ns.artifact, replicas=ns.replicas, max_batch=ns.max_batch,
                            batch_wait_ms=ns.batch_wait_ms, threads=ns.threads,
                            replica_cpus=ns.replica_cpus,
                            max_body_bytes=int(ns.max_body_mb * (1 << 20)),
                            max_ongoing_requests=ns.max_ongoing,
                            trust_native=ns.trust_native, public_key=ns.public_key,
                            stuck_after_s=ns.stuck_after_s),
                HttpConfig(host=ns.host, port=ns.port, address=ns.address))
    except ValueError as e:
        raise UsageError(str(e)) from None


def serve_command(configs, out: Console) -> None:
    """Start serving, print the URL, block until SIGINT/SIGTERM, shut down."""
    from dycomp.cli import UsageError

    config, http = configs
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise UsageError("dycomp serve needs Ray Serve: pip install 'dycomp[serve]'") from None
    from dycomp.serve.app import serve_forever

    def ready(url: str) -> None:
        out.print(f"serving {config.artifact} at {url} ({config.replicas} replica(s), "
                  f"batches of up to {config.max_batch}); Ctrl-C to stop", **_PLAIN)

    serve_forever(config, http, on_ready=ready)
    out.print("stopped", **_PLAIN)
