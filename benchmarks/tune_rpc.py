"""MetaSchedule tuning time: measured locally vs on 2 loopback TVM RPC servers.

A small CNN with an early exit (two regions, a few conv/dense tasks) is tuned twice from
an empty database: with MetaSchedule's LocalRunner, and with `TuneConfig(rpc=...)` on a
tracker and 2 servers started on 127.0.0.1 (`LoopbackWorkers`). Printed per mode: tuning
seconds, tasks, records, candidates measured (valid run time), the database files, and
the tuned model's median call time. Both databases are then read back the same way.

On one machine the servers share its cores with the builder and the search, so this shows
the plumbing works and what it costs, not a speedup: fan-out pays off with workers on
other machines (`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` there).

Run: python benchmarks/tune_rpc.py [--trials 8] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from dycomp.backends.tvm_rpc import LoopbackWorkers  # noqa: E402


class SmallCNN(nn.Module):
    """conv-relu-conv-relu, exit when confident, else another conv; pooled to 10 logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.exit = nn.Linear(8, 10)
        self.deep = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.stem(x)
        early = self.exit(h.mean((2, 3)))
        if early.softmax(-1).max() > 0.5:
            return early
        return self.head(self.deep(h).mean((2, 3)))


def _records(db: Path) -> tuple[int, int]:
    """(records, records with a valid measurement) in a JSON tuning database."""
    from tvm.s_tir import meta_schedule as ms

    records = ms.database.JSONDatabase(work_dir=str(db)).get_all_tuning_records()
    valid = sum(1 for r in records if r.run_secs and float(r.run_secs[0]) < 1)
    return len(records), valid


def _median_ms(cm, inputs) -> float:
    arrays = [x.numpy() for x in inputs]
    for a in arrays[:3]:
        cm.program.run(a)
    times = []
    for a in arrays:
        t0 = time.perf_counter()
        cm.program.run(a)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def tune(model, example, inputs, trials: int, db: Path, rpc: str | None) -> dict:
    tune_cfg = dycomp.TuneConfig(trials=trials, db=db, rpc=rpc)
    t0 = time.perf_counter()
    cm = dycomp.compile(model, example, backend="tvm", tune=tune_cfg, check=False)
    total = time.perf_counter() - t0
    report = cm.executor.report
    records, valid = _records(db)
    return {"tune_s": round(report.tune_seconds, 1), "compile_s": round(total, 1),
            "tasks": report.tasks, "records": records, "valid": valid,
            "files": sorted(p.name for p in db.iterdir()),
            "call_ms": round(_median_ms(cm, inputs), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    model = SmallCNN().eval()
    torch.manual_seed(1)
    inputs = [torch.randn(1, 3, 16, 16) for _ in range(30)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="dycomp-tune-rpc-") as tmp:
        results["local"] = tune(model, inputs[0], inputs, args.trials, Path(tmp, "local"), None)
        t0 = time.perf_counter()
        with LoopbackWorkers(args.workers, key="bench") as workers:
            start_s = time.perf_counter() - t0
            results["rpc"] = tune(model, inputs[0], inputs, args.trials, Path(tmp, "rpc"),
                                  workers.address)
        results["rpc"]["workers_start_s"] = round(start_s, 1)
    print(f"trials {args.trials} per task, {args.workers} loopback RPC server(s)")
    for mode, r in results.items():
        print(f"{mode:>5}: tune {r['tune_s']:6.1f} s (compile {r['compile_s']:.1f} s), "
              f"{r['tasks']} tasks, {r['records']} records ({r['valid']} measured), "
              f"tuned call {r['call_ms']:.3f} ms, files {', '.join(r['files'])}"
              + (f"; servers up in {r['workers_start_s']} s" if "workers_start_s" in r
                 else ""))
    same = results["local"]["files"] == results["rpc"]["files"]
    print(f"same database files: {same}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if same and results["rpc"]["valid"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
