"""Measure the constants of the dynamic-aware passes' cost model (`passes/cost.py`).

    python benchmarks/cost_model.py

Prints, on ONNX Runtime with 2 threads at batch 1:
- dispatch: one host-dispatched call of a small region through dycomp's executor, plus
  the host's `bool()` and `if` (the smallest region of policy_net);
- per-op: the extra time of one more small node inside a session (a chain of 64 tanh
  nodes on a 1x64 tensor against a chain of 1);
- throughput (session call time subtracted): FLOP per microsecond of 3x3 convolutions
  (16 channels on 8x8, 32 on 16x16) and of a 64x256 @ 256x256 matmul.
"""

from __future__ import annotations

import io
import sys
import timeit
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from examples.zoo import ZOO  # noqa: E402


def best_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def session(module: nn.Module, example: torch.Tensor) -> tuple:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, opset_version=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: example.numpy()}
    return lambda: sess.run(None, feed)


class Chain(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        for _ in range(self.n):
            x = torch.tanh(x)
        return x


class MatMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 256))

    def forward(self, x):
        return x @ self.w


def main() -> None:
    model, example = ZOO["policy_net"].make()
    cm = dycomp.compile(model, example, backend="onnx", fuse_branches=False, optimize=False)
    ex = cm.program.executor
    small = min(cm.graph.regions.values(), key=lambda r: len(ex.models[r.name]))
    args = [p.meta["example"].numpy() for p in small.placeholders]

    def dispatch():
        out = ex(small.name, *args)
        if bool(np.asarray(out[0]).reshape(-1)[0]):
            pass

    print(f"dispatch (host call + bool + if): {best_us(dispatch, 5000):.1f} us")
    x = torch.randn(1, 64)
    one, many = session(Chain(1), x), session(Chain(64), x)
    base = best_us(one, 2000)  # the session call itself, subtracted from the kernels below
    print(f"per op in a session: {(best_us(many, 2000) - base) / 63:.2f} us")
    conv_x = torch.randn(1, 32, 16, 16)
    conv_us = best_us(session(nn.Conv2d(32, 32, 3, padding=1), conv_x), 500) - base
    mm_us = best_us(session(MatMul(), torch.randn(64, 256)), 500) - base
    small_us = best_us(session(nn.Conv2d(16, 16, 3, padding=1), torch.randn(1, 16, 8, 8)),
                       2000) - base
    conv_flop, mm_flop = 2 * 32 * 16 * 16 * 32 * 9, 2 * 64 * 256 * 256
    small_flop = 2 * 16 * 8 * 8 * 16 * 9
    print(f"conv 16x8x8 3x3: {small_us:.1f} us, {small_flop / small_us:,.0f} FLOP/us")
    print(f"conv 32x16x16 3x3: {conv_us:.1f} us, {conv_flop / conv_us:,.0f} FLOP/us")
    print(f"matmul 64x256x256: {mm_us:.1f} us, {mm_flop / mm_us:,.0f} FLOP/us")


if __name__ == "__main__":
    main()
