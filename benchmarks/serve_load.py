"""Load and fault test of `dycomp serve` on loopback (Ray Serve, bounded in requests and time).

Closed-loop clients (each sends its next request when the last is answered) at several
concurrencies, for 1 and 2 replicas with batching off (max batch 1) and on; throughput and
p50/p99 latency. Then the fault test: 2 replicas under load, one replica process killed
(SIGKILL) mid-run; clients retry on connection errors and 5xx, and every request must still
be answered correctly; the replica must come back. Every answer is compared with the
batch-1 answer of `dycomp.runtime` in this process (`art.run`, fp32 atol/rtol 1e-4, and
counted bitwise). Bodies are `.npz`.

    python benchmarks/serve_load.py [--artifact net.dyc] [--requests 200] [--cell-s 20]

Without --artifact it compiles the zoo's multi_exit (ONNX) first. On a machine shared with
other work the figures show the plumbing under load, not the server's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dycomp import runtime  # noqa: E402
from dycomp.runtime.outputs import flatten_outputs  # noqa: E402
from dycomp.serve import ServeConfig, protocol  # noqa: E402

log = logging.getLogger("serve_load")
RETRIES = 20


@dataclass
class Cell:
    """One closed-loop run: what was asked, and what came back."""

    latencies: list = field(default_factory=list)
    wrong: int = 0
    bitwise: int = 0
    lost: int = 0
    retries: int = 0
    seconds: float = 0.0

    def row(self) -> str:
        lat = np.asarray(self.latencies) * 1000
        p50, p99 = (np.percentile(lat, [50, 99]) if len(lat) else (np.nan, np.nan))
        n = len(lat)
        return (f"{n:5d} req {n / self.seconds:7.1f} req/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
                f"  wrong {self.wrong}  lost {self.lost}  retries {self.retries}"
                f"  bitwise {self.bitwise}/{n}")


def make_artifact(tmp: Path, model: str) -> Path:
    """The zoo's multi_exit (batch-coupled exits), or `per-sample`: a small CNN whose only
    decision is a per-row `torch.where`, compiled with a dynamic batch dim (so run_batch
    concatenates requests into one call); ONNX. The only step that imports torch."""
    import torch
    from torch import nn

    import dycomp
    from examples.zoo import multi_exit

    class PerSample(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(4), nn.Flatten(1), nn.Linear(512, 256),
                                   nn.ReLU(), nn.Linear(256, 10))

        def forward(self, x):
            h = self.f(x)
            return torch.where(h.amax(1, keepdim=True) > 0.1, h, -h)

    torch.manual_seed(0)
    if model == "multi_exit":
        net, args, dims = *multi_exit.make(), None
    else:
        net, args, dims = PerSample().eval(), (torch.randn(1, 3, 32, 32),), {"x": {0: "batch"}}
    path = tmp / f"{model}.dyc"
    dycomp.compile(net, args, backend="onnx", dynamic_dims=dims).save(path)
    return path


def inputs_and_answers(art, n: int, seed: int = 0):
    """`n` random requests, their .npz bodies, and their batch-1 answers."""
    rng = np.random.RandomState(seed)
    shapes = [tuple(1 if isinstance(d, str) else d for d in s.shape)  # dynamic dims: 1
              for s in art.signature.inputs]
    reqs = [tuple((rng.randn(*shape) * rng.choice([0.5, 1, 3])).astype(s.dtype)
                  for s, shape in zip(art.signature.inputs, shapes)) for _ in range(n)]
    bodies = []
    for r in reqs:
        buf = io.BytesIO()
        np.savez(buf, **{s.name: a for s, a in zip(art.signature.inputs, r)})
        bodies.append(buf.getvalue())
    want = [dict(flatten_outputs(art.run(*r))) for r in reqs]
    return bodies, want


def same(got: dict, want: dict) -> tuple[bool, bool]:
    """(close within fp32 1e-4, bitwise equal) of an .npz answer and a batch-1 answer."""
    keys = [k for k, v in want.items() if v is not None]
    if sorted(got) != sorted(keys):
        return False, False
    close = all(np.allclose(got[k], np.asarray(want[k]), rtol=1e-4, atol=1e-4) for k in keys)
    exact = all(np.array_equal(got[k], np.asarray(want[k])) for k in keys)
    return close, exact


async def one(session, url: str, body: bytes, cell: Cell):
    """POST with retries on connection errors and 5xx; the answer's .npz, or None (lost)."""
    for attempt in range(RETRIES):
        try:
            async with session.post(url, data=body, headers={"Content-Type": NPZ}) as r:
                data = await r.read()
                if r.status == 200:
                    return protocol.read_npz_answer(data)
                if r.status < 500:
                    log.warning("HTTP %d: %s", r.status, data[:200])
                    return None
        except Exception as e:  # connection reset by a killed replica's proxy route
            log.debug("retry after %s", e)
        cell.retries += 1
        await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
    return None


NPZ = "application/octet-stream"


async def closed_loop(url: str, bodies, want, concurrency: int, requests: int,
                      limit_s: float, during=None) -> Cell:
    """`concurrency` clients share `requests` requests (cycling over the bodies), stopping
    early after `limit_s`; `during(cell)` runs beside them (the fault test's kill)."""
    import aiohttp

    cell, counter = Cell(), iter(range(requests))
    deadline = time.perf_counter() + limit_s

    async def client(session):
        for i in counter:
            if time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            got = await one(session, url, bodies[i % len(bodies)], cell)
            if got is None:
                cell.lost += 1
                continue
            cell.latencies.append(time.perf_counter() - t)
            close, exact = same(got, want[i % len(bodies)])
            cell.wrong += not close
            cell.bitwise += exact

    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        tasks = [client(session) for _ in range(concurrency)]
        if during is not None:
            tasks.append(during(cell))
        await asyncio.gather(*tasks)
        cell.seconds = time.perf_counter() - start
    return cell


def deploy(cfg: ServeConfig, port: int, cpus: int) -> str:
    from dycomp.serve import app

    return app.start(cfg, app.HttpConfig(port=port, num_cpus=cpus))


def replica_pids(url: str, want: int, timeout_s: float = 60) -> set[int]:
    """The pids of the serving replicas (GET /-/info until `want` distinct ones answer)."""
    import json
    import urllib.request

    pids: set[int] = set()
    deadline = time.time() + timeout_s
    while len(pids) < want and time.time() < deadline:
        with urllib.request.urlopen(url + "-/info", timeout=30) as r:
            pids.add(json.loads(r.read())["pid"])
    return pids


def running_replicas(name: str = "dycomp") -> int:
    from ray import serve

    dep = serve.status().applications[name].deployments[name]
    return int(dep.replica_states.get("RUNNING", 0))


def fault_test(url: str, bodies, want, args) -> None:
    """2 replicas, batching on, concurrency 16: SIGKILL one replica a second in."""
    before = replica_pids(url, 2)
    victim = min(before)
    report = {}

    async def kill(cell):
        await asyncio.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        report["killed_at"] = time.perf_counter()
        report["answered_before_kill"] = len(cell.latencies)

    cell = asyncio.run(closed_loop(url, bodies, want, 16, args.fault_requests,
                                   args.cell_s * 3, during=kill))
    t = time.perf_counter()
    while running_replicas() < 2 and time.perf_counter() - t < 120:
        time.sleep(0.5)
    restored = time.perf_counter() - report["killed_at"]
    after = replica_pids(url, 2)
    print(f"fault: killed replica pid {victim} after {report['answered_before_kill']} answers; "
          f"{cell.row()}")
    print(f"fault: requests sent {args.fault_requests}, answered "
          f"{len(cell.latencies)}, lost {cell.lost}, wrong {cell.wrong}; "
          f"2 replicas running again {restored:.1f} s after the kill; pids {sorted(before)} "
          f"-> {sorted(after)} (restarted: {victim not in after})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path)
    p.add_argument("--model", choices=("multi_exit", "per-sample"), default="multi_exit",
                   help="without --artifact: what to compile (per-sample: a dynamic batch "
                        "dim, requests concatenated by run_batch)")
    p.add_argument("--requests", type=int, default=200, help="requests per cell")
    p.add_argument("--cell-s", type=float, default=20.0, help="time limit per cell")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--fault-requests", type=int, default=600)
    p.add_argument("--port", type=int, default=18777)
    p.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs")
    p.add_argument("--max-ongoing", type=int, default=64,
                   help="requests a replica accepts at once (Ray's default is 5)")
    p.add_argument("--skip-fault", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.artifact or make_artifact(Path(tmp), args.model)
        art = runtime.load(path, threads=1)
        bodies, want = inputs_and_answers(art, 64)
        t = time.perf_counter()
        for _ in range(3):
            for b in bodies:
                art.run(*[v for v in protocol.read_npz_answer(b).values()])
        per_call = (time.perf_counter() - t) / (3 * len(bodies)) * 1000
        print(f"artifact {path} {art.signature}; {len(bodies)} distinct requests; "
              f"in-process art.run (1 thread, .npz decode included): {per_call:.2f} ms/call")
        from dycomp.serve import app

        try:
            for replicas in (1, 2):
                for batch in (1, 8):
                    cfg = ServeConfig(path, replicas=replicas, max_batch=batch,
                                      batch_wait_ms=2.0, threads=1, replica_cpus=0.5,
                                      max_ongoing_requests=args.max_ongoing)
                    url = deploy(cfg, args.port, args.cpus)
                    replica_pids(url, replicas)
                    for c in map(int, args.concurrency.split(",")):
                        cell = asyncio.run(closed_loop(url, bodies, want, c, args.requests,
                                                       args.cell_s))
                        print(f"replicas {replicas} batch {batch:2d} conc {c:3d}: {cell.row()}",
                              flush=True)
            if not args.skip_fault:
                cfg = ServeConfig(path, replicas=2, max_batch=8, threads=1, replica_cpus=0.5)
                fault_test(deploy(cfg, args.port, args.cpus), bodies, want, args)
        finally:
            app.stop()


if __name__ == "__main__":
    main()
