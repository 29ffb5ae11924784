"""Distributed MetaSchedule measurement through TVM's RPC tracker.

`TuneConfig(rpc="host:port:key")` measures tuning candidates on the RPC servers registered
with a tracker under `key` (MetaSchedule's `RPCRunner`, one connection per server), while
candidates are still built here and the tuning database stays the local one. Workers are
TVM's own: `python -m tvm.exec.rpc_tracker` and `python -m tvm.exec.rpc_server` (they need
the `tornado` package). `LoopbackWorkers` starts a tracker and servers on this machine
(tests, benchmarks).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass

from dycomp.errors import DycompError

log = logging.getLogger(__name__)

#: Seconds to reach the tracker and to wait for a free server of the key.
CONNECT_TIMEOUT = 5.0
#: Seconds one candidate's measurement session may take (upload, link, run).
SESSION_TIMEOUT = 60


@dataclass(frozen=True)
class RpcAddress:
    """A tracker address and the key its measurement servers registered under."""

    host: str
    port: int
    key: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.key}"

    @classmethod
    def parse(cls, text: str) -> RpcAddress:
        """'host:port:key' (the host may be an IPv6 address: the last two fields split off);
        ValueError naming the expected form otherwise."""
        form = "TuneConfig.rpc / --tune-rpc must be 'HOST:PORT:KEY' (e.g. 127.0.0.1:9190:cpu)"
        if not isinstance(text, str):
            raise ValueError(f"{form}, got {text!r}")
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(f"{form}, got {text!r}")
        host, port, key = (p.strip() for p in parts)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{form}: the port must be an int in 1..65535, got {port!r}")
        return cls(host.strip("[]"), int(port), key)


def tracker_summary(addr: RpcAddress, timeout: float = CONNECT_TIMEOUT) -> dict:
    """The tracker's summary (servers and queues), or DycompError naming the address when
    it cannot be reached or does not answer like a TVM tracker within `timeout` seconds.
    (TVM's own client retries a refused connection for 60 s.)"""
    from tvm.rpc import base

    where = f"TVM RPC tracker {addr.host}:{addr.port}"
    try:
        with socket.create_connection((addr.host, addr.port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
            if magic != base.RPC_TRACKER_MAGIC:
                raise DycompError(f"{where} is not a TVM RPC tracker (bad handshake)")
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            code, summary = base.recvjson(sock)
    except (OSError, RuntimeError, ValueError) as e:
        raise DycompError(f"{where} is unreachable ({e or type(e).__name__}); start one with "
                          "`python -m tvm.exec.rpc_tracker --port PORT` or fix "
                          "TuneConfig.rpc / --tune-rpc") from e
    if code != base.TrackerCode.SUCCESS:
        raise DycompError(f"{where} refused the summary request (code {code})")
    return summary


def count_servers(summary: dict, key: str) -> tuple[int, int]:
    """(servers registered under `key`, of which free now) in a tracker summary."""
    total = sum(1 for s in summary.get("server_info", [])
                if s.get("key", "").split(":", 1)[-1] == key)
    free = int(summary.get("queue_info", {}).get(key, {}).get("free", 0))
    return total, free


def wait_for_servers(addr: RpcAddress, timeout: float = CONNECT_TIMEOUT, need: int = 1) -> int:
    """The number of servers registered under the key, once `need` of them are free;
    DycompError naming the tracker and key when that does not happen within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        total, free = count_servers(tracker_summary(addr, timeout), addr.key)
        if free >= need:
            return total
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    state = f"{total} registered, all busy" if total else "none registered"
    raise DycompError(
        f"TVM RPC tracker {addr.host}:{addr.port} has no free server for key {addr.key!r} "
        f"({state}, waited {timeout:g} s); start one with `python -m tvm.exec.rpc_server "
        f"--tracker {addr.host}:{addr.port} --key {addr.key}`")


def rpc_runner(text: str):
    """MetaSchedule's RPCRunner for the tracker at 'host:port:key', one connection per
    server registered under the key (checked first: a clear error, not a 60 s retry)."""
    from tvm.s_tir import meta_schedule as ms

    addr = RpcAddress.parse(text)
    servers = wait_for_servers(addr)
    log.info("tuning measures on %d RPC server(s) of %s", servers, addr)
    config = ms.runner.RPCConfig(tracker_host=addr.host, tracker_port=addr.port,
                                 tracker_key=addr.key, session_timeout_sec=SESSION_TIMEOUT)
    return ms.runner.RPCRunner(config, max_workers=servers)


class LoopbackWorkers:
    """A TVM RPC tracker and `n` servers on 127.0.0.1 (free ports), for tests and
    benchmarks: `with LoopbackWorkers(2) as w: TuneConfig(rpc=w.address)`. The servers
    run without torch (it is hidden from their worker processes: faster starts)."""

    def __init__(self, n: int = 2, key: str = "dycomp", timeout: float = 60.0):
        self.n, self.key, self.timeout = n, key, timeout
        self.tracker = None
        self.servers: list = []

    @property
    def address(self) -> str:
        return str(RpcAddress("127.0.0.1", self.tracker.port, self.key))

    def __enter__(self) -> LoopbackWorkers:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        from tvm import rpc
        from tvm.rpc.tracker import Tracker

        first = _free_port()
        self.tracker = Tracker("127.0.0.1", port=first, port_end=first + 200, silent=True)
        from dycomp.backends.tvm_backend import _tuning_env  # torch hidden: faster starts

        with _tuning_env():
            for _ in range(self.n):
                port = _free_port()
                self.servers.append(rpc.Server(
                    "127.0.0.1", port=port, port_end=port + 200, key=self.key, silent=True,
                    tracker_addr=("127.0.0.1", self.tracker.port)))
        wait_for_servers(RpcAddress.parse(self.address), self.timeout, need=self.n)

    def close(self) -> None:
        for server in self.servers:
            server.terminate()
        self.servers = []
        if self.tracker is not None:
            self.tracker.terminate()
            self.tracker = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
