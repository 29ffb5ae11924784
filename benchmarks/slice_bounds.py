"""Selector slices: one region per shape, or one region with the slice bounds as inputs?
(issue #26)

    python benchmarks/slice_bounds.py [--rounds 31] [--calls 10] [--models cnn,wide,ffn]

A slimmable network runs sub-network `width` by slicing its weights (`w[:c_out, :c_in]`).
dycomp compiles one sub-network per declared width: the exporter folds each slice into a
constant, so every width is its own static ONNX graph (design a). The alternative is one
ONNX graph of the full weights whose slice bounds are graph inputs (0-d int64 tensors
feeding `Slice`, design b): one model for all widths, nothing to select. Per model:

- a: `dycomp.compile(net, (x,), backend="onnx", selectors={"width": WIDTHS})`, saved and
  loaded with `dycomp.runtime` (numpy in, the deployed call `rt(x, width=w)`);
- b: the one graph with bounds as inputs, built here with `onnx.helper`, in a session
  with dycomp's own options (`dycomp.runtime.onnx_executor.new_session`, `--threads`,
  default 2 as dycomp);
- b_fed: b with every weight sliced once (here, for one width) and fed as a graph
  input: no `Slice` per call, but weights ONNX Runtime cannot prepare at session creation;
- b_const: the same graph with the bounds of one width as constants (ONNX Runtime folds
  the slices and sees constant weights again): b minus the cost of dynamic bounds.

Per width it asserts that a, b, b_fed and b_const equal eager PyTorch (rtol = atol =
1e-4 on several inputs), prints the median microseconds per call of each, timed
interleaved (each round runs each contender `--calls` times in a new random order), and
their ratios to a; per model the bytes, the weights held once loaded and the
compile/export and load times of a and b, the operators ONNX Runtime runs after
optimizing b, b_fed and b_const at full width, and their per-operator time from ONNX
Runtime's profiler (where the difference goes).

Models: `cnn`, the slimmable CNN of `subnet_selectors.py` (3 convs up to 256 channels,
32x32, an early exit); `wide`, the same with 4 convs up to 512 channels; `ffn`, two
pre-norm residual feed-forward blocks (LayerNorm, Linear 256->1024*width, ReLU,
Linear back) on 32 tokens, the slimmable part of a transformer.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from subnet_selectors import WIDTHS, SlimNet, size, timed  # noqa: E402

import dycomp  # noqa: E402
from dycomp.runtime.onnx_executor import new_session, session_options  # noqa: E402

OPSET = 17
THREADS = 2


class WideSlimNet(SlimNet):
    """SlimNet's forward with 4 convs of up to 64/128/256/512 channels."""

    def __init__(self):
        nn.Module.__init__(self)
        chans, strides = [3, 64, 128, 256, 512], [1, 2, 2, 2]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, stride=s)
                                   for a, b, s in zip(chans, chans[1:], strides))
        self.fc = nn.Linear(512, 100)


class SlimFFN(nn.Module):
    """Two pre-norm residual feed-forward blocks whose hidden width is sliced."""

    def __init__(self, d: int = 256, hidden: int = 1024, blocks: int = 2):
        super().__init__()
        self.hidden = hidden
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks))
        self.ups = nn.ModuleList(nn.Linear(d, hidden) for _ in range(blocks))
        self.downs = nn.ModuleList(nn.Linear(hidden, d) for _ in range(blocks))

    def forward(self, x, width=1.0):
        c = int(self.hidden * width)
        for norm, up, down in zip(self.norms, self.ups, self.downs):
            h = F.relu(F.linear(norm(x), up.weight[:c], up.bias[:c]))
            x = x + F.linear(h, down.weight[:, :c], down.bias)
        return x


# -- design b: one ONNX graph, slice bounds as inputs ---------------------------------------
class Builder:
    """An ONNX graph under construction. Bounds are 0-d int64 graph inputs, or constants
    when `fixed` gives their values (design b_const); with `fed` too, each sliced weight
    is a graph input instead, sliced once here and put in `fed` (b_fed)."""

    def __init__(self, fixed: dict[str, int] | None = None, fed: dict | None = None):
        self.nodes, self.inits, self.inputs, self.fixed, self.fed = [], [], [], fixed, fed
        self._n, self._bounds = 0, {}

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, arr, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def bound(self, name: str) -> str:
        """The 1-D [bound] tensor of the bound `name` (a 0-d int64 input or constant)."""
        if name not in self._bounds:
            if self.fixed is not None:
                self._bounds[name] = self.const(np.array([self.fixed[name]], np.int64), name)
            else:
                self.inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, []))
                self._bounds[name] = self.op("Unsqueeze", [name, self.const(
                    np.array([0], np.int64))])
        return self._bounds[name]

    def sliced(self, arr: np.ndarray, ends: list[str | None]) -> str:
        """`arr[:ends[0], :ends[1], ...]` (None: the whole axis); `arr` stored whole."""
        if self.fed is not None:
            name = self.name("fed")
            self.fed[name] = arr[tuple(slice(None if e is None else self.fixed[e])
                                       for e in ends)].astype(np.float32)
            self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                             list(self.fed[name].shape)))
            return name
        w = self.const(arr.astype(np.float32), "w")
        axes = [i for i, e in enumerate(ends) if e is not None]
        stops = self.op("Concat", [self.bound(ends[i]) for i in axes], axis=0) \
            if len(axes) > 1 else self.bound(ends[axes[0]])
        return self.op("Slice", [w, self.const(np.zeros(len(axes), np.int64)), stops,
                                 self.const(np.array(axes, np.int64))])

    def arm(self, build, stem: str, rank: int) -> onnx.GraphProto:
        """An `If` arm: the nodes `build()` adds (they may use the outer graph's names),
        its one output the name `build` returns."""
        outer, self.nodes = self.nodes, []
        out = build()
        arm = helper.make_graph(self.nodes, stem, [], [helper.make_tensor_value_info(
            out, TensorProto.FLOAT, [None] * rank)])
        self.nodes = outer
        return arm

    def model(self, x: np.ndarray, out: str, rank: int) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
        graph = helper.make_graph(self.nodes, "slice_bounds", inputs + self.inputs,
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                                 [None] * rank)],
                                  initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        onnx.checker.check_model(m)
        return m


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def cnn_graph(net: SlimNet, x: np.ndarray, fixed=None, fed=None) -> onnx.ModelProto:
    """SlimNet's forward with bounds c0, c1, ... (each conv's kept output channels)."""
    g = Builder(fixed, fed)
    h, c_in = "x", None
    for i, conv in enumerate(net.convs):
        w = g.sliced(_np(conv.weight), [f"c{i}", c_in, None, None])
        b = g.sliced(_np(conv.bias), [f"c{i}"])
        h = g.op("Relu", [g.op("Conv", [h, w, b], pads=[1, 1, 1, 1],
                               strides=list(conv.stride))])
        c_in = f"c{i}"
    h = g.op("ReduceMean", [h], axes=[2, 3], keepdims=0)
    cond = g.op("Greater", [g.op("ReduceMean", [g.op("Abs", [h])], keepdims=0),
                            g.const(np.array(10.0, np.float32))])
    then = g.arm(lambda: g.op("Slice", [h, g.const(np.array([0], np.int64)), g.const(
        np.array([10], np.int64)), g.const(np.array([1], np.int64))]), "exit", 2)
    other = g.arm(lambda: g.op("Gemm", [h, g.sliced(_np(net.fc.weight), [None, c_in]),
                                        g.const(_np(net.fc.bias))], transB=1), "fc", 2)
    return g.model(x, g.op("If", [cond], then_branch=then, else_branch=other), 2)


def cnn_bounds(net: SlimNet, width: float) -> dict[str, int]:
    return {f"c{i}": int(conv.out_channels * width) for i, conv in enumerate(net.convs)}


def ffn_graph(net: SlimFFN, x: np.ndarray, fixed=None, fed=None) -> onnx.ModelProto:
    """SlimFFN's forward with bound c (the hidden width); weights stored transposed for
    MatMul, sliced on their hidden axis."""
    g = Builder(fixed, fed)
    h = "x"
    for norm, up, down in zip(net.norms, net.ups, net.downs):
        n = g.op("LayerNormalization", [h, g.const(_np(norm.weight)), g.const(
            _np(norm.bias))], axis=-1, epsilon=norm.eps)
        u = g.op("Add", [g.op("MatMul", [n, g.sliced(_np(up.weight).T.copy(), [None, "c"])]),
                         g.sliced(_np(up.bias), ["c"])])
        d = g.op("MatMul", [g.op("Relu", [u]), g.sliced(_np(down.weight).T.copy(),
                                                        ["c", None])])
        h = g.op("Add", [h, g.op("Add", [d, g.const(_np(down.bias))])])
    return g.model(x, h, 3)


def ffn_bounds(net: SlimFFN, width: float) -> dict[str, int]:
    return {"c": int(net.hidden * width)}


MODELS = {  # name: (model factory, example input shape, graph builder, bounds)
    "cnn": (SlimNet, (1, 3, 32, 32), cnn_graph, cnn_bounds),
    "wide": (WideSlimNet, (1, 3, 32, 32), cnn_graph, cnn_bounds),
    "ffn": (SlimFFN, (1, 32, 256), ffn_graph, ffn_bounds),
}


# -- measuring -------------------------------------------------------------------------------
def feeds(bounds: dict[str, int], x: np.ndarray) -> dict:
    return {"x": x, **{k: np.array(v, np.int64) for k, v in bounds.items()}}


def assert_same(got, ref: torch.Tensor, what: str) -> None:
    np.testing.assert_allclose(np.asarray(got), _np(ref), rtol=1e-4, atol=1e-4,
                               err_msg=what)


def optimized_ops(model: onnx.ModelProto, threads: int) -> str:
    """The operators ONNX Runtime runs after optimizing `model` (with dycomp's options,
    without dycomp's NCHWc rewrite across `If`s), nested `If` arms included, as `Op xN`
    sorted by count."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = session_options(threads)
        so.optimized_model_filepath = os.path.join(d, "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(os.path.join(d, "opt.onnx"))
    from dycomp.backends.onnx_backend import all_nodes

    counts = collections.Counter(f"{n.domain.rsplit('.', 1)[-1] + ':' if n.domain else ''}"
                                 f"{n.op_type}" for n in all_nodes(opt.graph))
    return ", ".join(f"{op} x{n}" for op, n in counts.most_common())


def profile(model: onnx.ModelProto, feed: dict, threads: int, runs: int = 50) -> str:
    """Per operator type, b's share of the node time ONNX Runtime's profiler records."""
    so = session_options(threads)
    with tempfile.TemporaryDirectory() as d:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(d, "prof")
        sess = new_session(model.SerializeToString(), threads, so)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return ", ".join(f"{op} {us / runs:.0f} us ({us / total:.0%})"
                     for op, us in per_op.most_common(6))


def run_model(name: str, rounds: int, calls: int, tmp: Path, threads: int) -> None:
    make, shape, build, bounds_of = MODELS[name]
    torch.manual_seed(0)
    net = make().eval()
    x = torch.randn(shape)
    rt, sess = designs(name, net, x, tmp, threads)
    xs = [torch.randn(shape, generator=torch.Generator().manual_seed(i)) * (1 + i)
          for i in range(4)]
    print(f"{'width':>6} {'a us':>9} {'b us':>9} {'b_fed us':>9} {'b_const us':>11} "
          f"{'b/a':>6} {'b_fed/a':>8} {'b_const/a':>10}")
    for w in WIDTHS:
        width_row(name, net, w, (x, xs), (rt, sess), (rounds, calls), threads)
    explain(net, x.numpy(), build, bounds_of(net, 1.0), threads)


def width_row(name: str, net: nn.Module, w: float, inputs: tuple, run: tuple,
              timing: tuple[int, int], threads: int) -> None:
    """One width: a, b, b_fed and b_const equal eager on `inputs[1]` (asserted), timed
    interleaved on `inputs[0]`."""
    _, _, build, bounds_of = MODELS[name]
    x, xs = inputs
    rt, sess = run
    bounds, fed = bounds_of(net, w), {}
    fed_sess = new_session(build(net, x.numpy(), bounds, fed).SerializeToString(), threads)
    const = new_session(build(net, x.numpy(), bounds).SerializeToString(), threads)
    calls_of = {"a": lambda xn: rt(xn, width=w),
                "b": lambda xn: sess.run(None, feeds(bounds, xn))[0],
                "b_fed": lambda xn: fed_sess.run(None, {"x": xn, **fed})[0],
                "b_const": lambda xn: const.run(None, {"x": xn})[0]}
    for i, xi in enumerate(xs):
        ref = net(xi, width=w)
        for k, f in calls_of.items():
            assert_same(f(xi.numpy()), ref, f"{name} {k} width={w} input {i}")
    xn = x.numpy()
    t = timed({k: lambda f=f: f(xn) for k, f in calls_of.items()}, *timing)
    print(f"{w:>6} {t['a']:>9.1f} {t['b']:>9.1f} {t['b_fed']:>9.1f} {t['b_const']:>11.1f} "
          f"{t['b'] / t['a']:>6.2f} {t['b_fed'] / t['a']:>8.2f} {t['b_const'] / t['a']:>10.2f}")


def designs(name: str, net: nn.Module, x: torch.Tensor, tmp: Path, threads: int):
    """Design a compiled, saved and loaded, and b's session; prints their bytes, the
    weights they hold and their compile/export and load times."""
    _, _, build, _ = MODELS[name]
    t0 = time.perf_counter()
    cm = dycomp.compile(net, (x,), backend="onnx", check=False, selectors={"width": WIDTHS})
    path = cm.save(tmp / f"{name}.dyc")
    t_a = time.perf_counter() - t0
    t0 = time.perf_counter()
    rt = dycomp.runtime.load(path, threads=threads)
    load_a = time.perf_counter() - t0
    t0 = time.perf_counter()
    one = build(net, x.numpy()).SerializeToString()
    t_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess = new_session(one, threads)
    load_b = time.perf_counter() - t0
    params = sum(p.numel() for p in net.parameters())
    print(f"\n== {name}: {params:,} parameters, input {list(x.shape)}")
    print(f"bytes: a (one artifact, {len(WIDTHS)} sub-networks) {size(path):,}; b (one ONNX "
          f"model) {len(one):,}")
    print(f"weights the loaded model holds: a {sum(cm.params.values()) * 4 / 2**20:.2f} MiB "
          f"(each sub-network its slices), b {params * 4 / 2**20:.2f} MiB")
    print(f"compile/export: a {t_a:.2f} s (dycomp.compile check=False + save), b {t_b:.2f} s "
          f"(build); load: a {load_a:.2f} s, b {load_b:.2f} s (session)")
    return rt, sess


def explain(net: nn.Module, x: np.ndarray, build, full: dict, threads: int) -> None:
    """At full width: the operators ONNX Runtime runs for b, b_fed and b_const, and b's
    and b_const's time per operator."""
    fed: dict = {}
    fed_model = build(net, x, full, fed)
    for label, model in (("b", build(net, x)), ("b_fed", fed_model),
                         ("b_const", build(net, x, full))):
        print(f"ONNX Runtime runs, {label} (width 1.0): {optimized_ops(model, threads)}")
    print(f"b profiled at width 1.0, per call: "
          f"{profile(build(net, x), feeds(full, x), threads)}")
    print(f"b_fed profiled at width 1.0, per call: "
          f"{profile(fed_model, {'x': x, **fed}, threads)}")
    print(f"b_const profiled at width 1.0, per call: "
          f"{profile(build(net, x, full), {'x': x}, threads)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="intra-op threads of every session (dycomp's default: 2)")
    args = ap.parse_args()
    print(f"{args.threads} intra-op thread(s) per session")
    random.seed(0)
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    for name in args.models.split(","):
        run_model(name, args.rounds, args.calls, tmp, args.threads)


if __name__ == "__main__":
    main()
