"""The settings of a served artifact, validated once (STYLE: configs are typed dataclasses;
the CLI only maps flags onto them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dycomp.serve.protocol import MAX_BODY_BYTES


@dataclass(frozen=True)
class ServeConfig:
    """What `dycomp serve` / `dycomp.serve.deployment` runs.

    artifact: the artifact directory (on every node of a cluster). replicas: replica
    processes. max_batch: requests per batch (1: no batching); batch_wait_ms: how long a
    batch waits to fill. threads: ONNX Runtime threads per subgraph in each replica
    (default: the runtime's). replica_cpus: Ray CPUs reserved per replica.
    max_ongoing_requests: requests a replica accepts at once; more wait in Ray's router,
    which backs off when every replica is full (64 closed-loop clients, one replica,
    `benchmarks/serve_load.py`: Ray's default of 5 gave 6.6 req/s, 64 gave 86)."""

    artifact: Path
    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 2.0
    threads: int | None = None
    replica_cpus: float = 1.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_ongoing_requests: int = 64
    trust_native: bool = False
    public_key: Path | None = None
    name: str = "dycomp"
    health_period_s: float = 10.0
    stuck_after_s: float = 120.0  # a model call running longer fails the health check

    def __post_init__(self):
        object.__setattr__(self, "artifact", Path(self.artifact).resolve())
        for field, low in (("replicas", 1), ("max_batch", 1), ("max_body_bytes", 1),
                           ("max_ongoing_requests", 1)):
            value = getattr(self, field)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{field} must be an int >= {low}; got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an int >= 1; got {self.threads!r}")
        if not self.stuck_after_s > 0:
            raise ValueError(f"stuck_after_s must be > 0; got {self.stuck_after_s!r}")
        for field in ("batch_wait_ms", "replica_cpus", "health_period_s"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0; got {getattr(self, field)!r}")
        if not (self.artifact / "manifest.json").is_file():
            raise ValueError(f"{self.artifact}: not a dycomp artifact (no manifest.json)")

    def max_ongoing(self) -> int:
        """Requests a replica accepts at once: `max_ongoing_requests`, and at least two full
        batches (one running, one filling)."""
        return max(self.max_ongoing_requests, 2 * self.max_batch)
