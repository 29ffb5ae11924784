"""Differential fuzzing beyond CI's sample: dycomp against eager PyTorch on many programs
of `tests/program_gen.py`.

    python benchmarks/fuzz_programs.py --seeds 6000 8000 --backend onnx [--statements 12]
        [--inputs 12] [--check]

Each seed's program is compiled (`check=False` unless `--check`: the compiled model
itself is judged, not the self-check) and run on `--inputs` seeded inputs; its outputs
must equal eager's (the suite's `assert_same`: structure, tensors within 1e-4, Python
values). Prints every failure (compile error, run error, or wrong output) with its seed,
then the count. CI runs 316 of these programs (`tests/test_generated_programs.py`);
a seed found here belongs in `tests/test_generated_regressions.py` once fixed. Run it
with a memory limit (`ulimit -v 8000000`): a runaway compile then fails instead of
taking the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dycomp  # noqa: E402
from tests.program_gen import load_source, make_inputs, random_program  # noqa: E402
from tests.test_generated_programs import assert_same, eager_with_trace  # noqa: E402


def fuzz_one(seed: int, statements: int, backend: str, inputs: int, check: bool,
             folder: str) -> str | None:
    """None if the program compiles and matches eager on every input, else what failed."""
    model = load_source(random_program(seed, max_stmts=statements).source(), folder)()
    xs = make_inputs(seed, inputs)
    try:
        cm = dycomp.compile(model, (xs[0],), backend=backend, check=check)
    except Exception as e:  # every generated construct is in the spec
        return f"compile: {type(e).__name__}: {e}"
    for i, x in enumerate(xs):
        try:
            with torch.no_grad():
                expected, _ = eager_with_trace(model, x)
                assert_same(expected, cm(x), f"input {i}")
        except Exception as e:
            return f"input {i}: {type(e).__name__}: {e}"
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs=2, type=int, required=True, metavar=("FIRST", "STOP"))
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--statements", type=int, default=8, help="max statements per program")
    p.add_argument("--inputs", type=int, default=12)
    p.add_argument("--check", action="store_true", help="compile with dycomp's self-check")
    a = p.parse_args(argv)
    start, bad = time.perf_counter(), 0
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(*a.seeds):
            what = fuzz_one(seed, a.statements, a.backend, a.inputs, a.check, folder)
            if what is not None:
                bad += 1
                print(f"seed {seed}: {what[:400]}", flush=True)
    n = a.seeds[1] - a.seeds[0]
    print(f"{a.backend}, seeds {a.seeds[0]}-{a.seeds[1] - 1}, {a.statements} statements: "
          f"{bad} of {n} failed ({time.perf_counter() - start:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
