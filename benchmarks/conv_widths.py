"""Why pruning some layers buys no latency on ONNX Runtime (CPU): conv cost vs channel count.

Per (channels, resolution): four 3x3 conv+ReLU layers at batch 1, 2 threads, timed
interleaved with the other sizes (medians), the output channels ONNX Runtime's convolution
really computes and the layout reorders it inserts (read from its optimized graph), and
the throughput in useful MACs. ONNX Runtime runs convolutions in a blocked layout
(NCHWc) whose block is the SIMD width, 16 fp32 channels with AVX-512: a conv with 8 or
12 output channels computes 16 and reorders its output back after every layer, one with
24 computes 32. The zoo's CIFAR ResNets have stages of 16 / 32 / 64 channels at 32x32 /
16x16 / 8x8, so halving the 16-channel stage saves nothing, and an allocation that
leaves 24 or 45 channels saves little. That is why `Prune(..., round_to="auto")` keeps
channel counts on multiples of the block.

Run: python benchmarks/conv_widths.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dycomp.passes.prune import simd_channels  # noqa: E402
from dycomp.runtime.onnx_executor import session_options  # noqa: E402

SIZES = [(16, 32), (8, 32), (12, 32), (32, 16), (16, 16), (24, 16), (64, 8), (32, 8),
         (48, 8), (16, 8)]
LAYERS = 4


def session(channels: int, hw: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[
        torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1), torch.nn.ReLU())
        for _ in range(LAYERS)]).eval()
    x = torch.randn(1, channels, hw, hw)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17)
    with tempfile.TemporaryDirectory() as d:
        opts = session_options(2)
        opts.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    shapes = {i.name: list(i.dims) for i in optimized.graph.initializer}
    computed = [shapes[n.input[1]][0] for n in optimized.graph.node
                if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"]
    reorders = sum(n.op_type.startswith("Reorder") for n in optimized.graph.node)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return (lambda: sess.run(None, feed)), (max(computed, default=channels), reorders)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200, help="calls per size and round")
    args = ap.parse_args(argv)
    runs = {s: session(*s) for s in SIZES}
    times = {s: [] for s in SIZES}
    for _ in range(args.rounds):
        for s, (run, _) in runs.items():
            for _ in range(20):
                run()
            for _ in range(args.calls):
                t0 = time.perf_counter()
                run()
                times[s].append(time.perf_counter() - t0)
    print(f"SIMD block on this CPU: {simd_channels()} fp32 channels; {LAYERS} conv3x3+ReLU "
          "layers, batch 1, 2 threads")
    print(f"{'channels':>8} {'HxW':>7} {'MMAC':>7} {'computes':>9} {'reorders':>9} "
          f"{'us':>8} {'GMAC/s':>7}")
    for (c, hw), (_, (computed, reorders)) in runs.items():
        us = 1e6 * statistics.median(times[(c, hw)])
        macs = LAYERS * c * c * 9 * hw * hw
        print(f"{c:>8} {f'{hw}x{hw}':>7} {macs / 1e6:>7.2f} {computed:>9} {reorders:>9} "
              f"{us:>8.1f} {macs / us / 1e3:>7.1f}")


if __name__ == "__main__":
    main()
