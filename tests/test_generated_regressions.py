"""Generated programs (`tests/program_gen.py`) that a larger fuzzing run than CI's found
failing, kept as regressions: each compiles and matches eager on 12 inputs.

- 5232 (onnx): a speculated `or` of tensor conditions selected booleans with a `Where`
  ONNX Runtime has no kernel for (`dycomp/backends/onnx_where.py`);
- 5235 (torch, onnx): a counter first assigned in an arm inside a loop was
  joined where it was undefined: an internal `VerifyError` (`frontend/liveness.py`);
- 5041 (torch, 10 statements): an arm that assigns and `continue`s; its value must
  still reach the next iteration (a first version of the liveness rule lost it);
- 6810 (torch): structural keys of `FuseAcrossDecisions` spelled out in full grew
  exponentially along an unrolled loop (24 GB, killed); now interned;
- 5048 (onnx): the loop variable of `for blk in self.blocks` left by a data-dependent
  `break` (a `Conflict`, fine while unused) failed when the ONNX backend copied the
  program: "values of different kinds meet" for a value nothing reads;
- 6254 (onnx): a fused `Loop` whose starting condition was computed from another
  `Loop`'s output had no known rank, and ONNX Runtime refused to run it ("Loop
  subgraph input 1 has unknown shape"); the starting condition keeps its 0-d reshape.
"""

from __future__ import annotations

import pytest
import torch

import dycomp
from tests.program_gen import load_source, make_inputs, random_program
from tests.test_generated_programs import assert_same, eager_with_trace

CASES = [(5232, 8, "onnx"), (5235, 8, "torch"), (5235, 8, "onnx"), (5041, 10, "torch"),
         (6810, 8, "torch"), (6810, 8, "onnx"), (5048, 8, "onnx"), (6254, 8, "onnx"),
         (6454, 12, "onnx")]


@pytest.mark.parametrize("seed,statements,backend", CASES)
def test_generated_program(seed, statements, backend, tmp_path):
    source = random_program(seed, max_stmts=statements).source()
    model = load_source(source, tmp_path)()
    xs = make_inputs(seed, 12)
    cm = dycomp.compile(model, (xs[0],), backend=backend, check=False)
    for i, x in enumerate(xs):
        with torch.no_grad():
            expected, _ = eager_with_trace(model, x)
            assert_same(expected, cm(x), f"input {i}")
