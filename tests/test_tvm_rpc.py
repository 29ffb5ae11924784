"""Tuning through TVM's RPC tracker (`TuneConfig(rpc=...)`, `--tune-rpc`): candidates are
measured on loopback RPC servers, the database is the local one in the local format, and
a tracker that is unreachable or has no server for the key is a clear, quick error."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

import dycomp
from dycomp.backends.tvm_backend import TuneConfig
from dycomp.backends.tvm_rpc import LoopbackWorkers, RpcAddress, rpc_runner
from dycomp.cli import main
from tests.helpers import assert_matches_eager, randn_inputs
from tests.test_tvm_backend import LinearReLU


@pytest.fixture(scope="module")
def workers():
    """A tracker and two servers on 127.0.0.1, torn down after the module."""
    with LoopbackWorkers(2, key="dycomp-test") as w:
        yield w


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket closes


def test_tuning_through_two_loopback_servers_fills_the_local_database(workers, tmp_path):
    from tvm.s_tir import meta_schedule as ms

    model, db = LinearReLU().eval(), tmp_path / "db"
    xs = randn_inputs((1, 16), 10)
    cm, _ = assert_matches_eager(model, xs, backend="tvm",
                                 tune=TuneConfig(trials=4, db=db, rpc=workers.address))
    report = cm.executor.report
    assert report.tuned and report.tasks >= 1 and report.tuned_now == report.tasks
    # The same JSON database as local tuning, with measurements from the servers.
    database = ms.database.JSONDatabase(work_dir=str(db))
    records = database.get_all_tuning_records()
    assert len(records) >= report.tasks
    measured = [float(r.run_secs[0]) for r in records if r.run_secs]
    assert any(0 < s < 1 for s in measured), measured  # failed candidates record 1e10
    # Reused locally (no RPC): every task is found tuned.
    again, _ = assert_matches_eager(model, xs, backend="tvm", tune=TuneConfig(trials=4, db=db))
    assert (again.executor.report.reused, again.executor.report.tuned_now) == (report.tasks, 0)


def test_key_without_servers_is_a_clear_error(workers):
    host, port, _ = workers.address.rsplit(":", 2)
    start = time.monotonic()
    with pytest.raises(dycomp.DycompError, match=rf"{host}:{port} has no free server for key "
                                                 r"'nobody' \(none registered"):
        rpc_runner(f"{host}:{port}:nobody")
    assert time.monotonic() - start < 15


def test_unreachable_tracker_is_a_clear_error_within_seconds(tmp_path):
    address = f"127.0.0.1:{_closed_port()}:cpu"
    start = time.monotonic()
    with pytest.raises(dycomp.DycompError, match=rf"tracker {address[:-4]} is unreachable"):
        dycomp.compile(LinearReLU().eval(), torch.randn(1, 16), backend="tvm", check=False,
                       tune=TuneConfig(trials=1, db=tmp_path / "db", rpc=address))
    assert time.monotonic() - start < 60  # capture + export + task extraction included
    start = time.monotonic()
    with pytest.raises(dycomp.DycompError, match="unreachable"):
        rpc_runner(address)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("bad", ["localhost:9190", "localhost:port:key", ":9190:key",
                                 "host:9190:", "host:70000:key", 9190])
def test_rpc_address_is_validated(bad):
    with pytest.raises(ValueError, match="HOST:PORT:KEY"):
        TuneConfig(trials=1, rpc=bad)


def test_rpc_address_parses_ipv6_hosts():
    assert RpcAddress.parse("[::1]:9190:cpu") == RpcAddress("::1", 9190, "cpu")
    assert str(RpcAddress.parse("10.0.0.2:9190:rasp4")) == "10.0.0.2:9190:rasp4"


@pytest.mark.parametrize("argv,message", [
    (["--tune-rpc", "h:1:k"], "--tune-rpc needs --backend tvm"),
    (["--backend", "tvm", "--tune-rpc", "h:1:k"], "--tune-rpc needs --tune-trials"),
    (["--backend", "tvm", "--tune-trials", "2", "--tune-rpc", "h:x:k"], "port must be an int"),
])
def test_cli_tune_rpc_usage_errors(capsys, argv, message):
    code = main(["compile", str(Path(__file__).parent / "cli_models.py") + ":make", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unnamed_handlers_are_detached_while_tuning_and_restored():
    """MetaSchedule's dictConfig names every handler on its logger; pytest's capture
    handler (no name) made the second tuning of a test session fail with `None.format`."""
    import logging

    from dycomp.backends.tvm_backend import MS_LOGGER, _unnamed_handlers_detached

    logger = logging.getLogger(MS_LOGGER)
    unnamed, named = logging.NullHandler(), logging.NullHandler()
    named.set_name("mine")
    logger.addHandler(unnamed)
    logger.addHandler(named)
    try:
        with _unnamed_handlers_detached(MS_LOGGER):
            assert unnamed not in logger.handlers and named in logger.handlers
        assert unnamed in logger.handlers and named in logger.handlers
    finally:
        logger.removeHandler(unnamed)
        logger.removeHandler(named)
