"""What a NaN-exact GRU-cell fusion would cost: an ONNX `Loop` of decoder-sized GRU steps
(input 48, hidden 32, batch 1, 8 iterations) in three forms, on ONNX Runtime (one
thread, graph optimizations on, as dycomp runs its sessions):

- "cell": the 14 nodes `torch.onnx.export` writes for an `nn.GRUCell` (what dycomp runs);
- "GRU": one ONNX `GRU` step (the fusion dycomp removed: ONNX Runtime's kernel clamps a
  NaN gate input and returns a finite state where eager gives NaN, issue #22);
- "guarded": `If(ReduceL1(x) + ReduceL1(h) < bound, GRU step, the 14 nodes)`, the
  fusion made exact (`ReduceL1` is NaN and inf for any non-finite input; `ReduceMax`
  skips a NaN in ONNX Runtime, so it cannot be the test).

The three run one call each per round in a new random order; medians over the rounds.
Run: python benchmarks/gru_guard.py [--rounds R]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

F = TensorProto.FLOAT
SIZE, HIDDEN, STEPS = 48, 32, 8


def _cell(x: str, h: str, y: str, p: str) -> list:
    """The exporter's GRU cell: y = (h - n) * z + n."""
    n = oh.make_node
    return [n("Gemm", [x, "w_ih", "b_ih"], [p + "gi"], transB=1),
            n("Gemm", [h, "w_hh", "b_hh"], [p + "gh"], transB=1),
            n("Split", [p + "gi"], [p + "i_r", p + "i_z", p + "i_n"], axis=1),
            n("Split", [p + "gh"], [p + "h_r", p + "h_z", p + "h_n"], axis=1),
            n("Add", [p + "i_r", p + "h_r"], [p + "ar"]),
            n("Add", [p + "i_z", p + "h_z"], [p + "az"]),
            n("Sigmoid", [p + "ar"], [p + "r"]), n("Sigmoid", [p + "az"], [p + "z"]),
            n("Mul", [p + "h_n", p + "r"], [p + "hr"]),
            n("Add", [p + "i_n", p + "hr"], [p + "an"]), n("Tanh", [p + "an"], [p + "n"]),
            n("Sub", [h, p + "n"], [p + "d"]), n("Mul", [p + "d", p + "z"], [p + "dz"]),
            n("Add", [p + "dz", p + "n"], [y])]


def _gru(x: str, h: str, y: str, p: str) -> list:
    """One ONNX `GRU` step on 2-d x and h."""
    return [oh.make_node("Unsqueeze", [x, "axis0"], [p + "x3"]),
            oh.make_node("Unsqueeze", [h, "axis0"], [p + "h3"]),
            oh.make_node("GRU", [p + "x3", "W", "R", "B", "", p + "h3"], ["", p + "y3"],
                         hidden_size=HIDDEN, linear_before_reset=1),
            oh.make_node("Squeeze", [p + "y3", "axis0"], [y])]


def _guarded(x: str, h: str, y: str, p: str) -> list:
    """The `GRU` step where x and h are finite and small, the exporter's cell elsewhere."""
    arms = [oh.make_graph(make(x, h, p + k, p + k + "_"), k, [],
                          [oh.make_tensor_value_info(p + k, F, None)])
            for make, k in ((_gru, "then"), (_cell, "else"))]
    return [oh.make_node("ReduceL1", [x], [p + "lx"], keepdims=0),
            oh.make_node("ReduceL1", [h], [p + "lh"], keepdims=0),
            oh.make_node("Add", [p + "lx", p + "lh"], [p + "l1"]),
            oh.make_node("Less", [p + "l1", "bound"], [p + "ok"]),
            oh.make_node("If", [p + "ok"], [y], then_branch=arms[0], else_branch=arms[1])]


def _weights(rng: np.random.Generator) -> list:
    def zrh(t):  # PyTorch's gate order r, z, n -> ONNX's z, r, h
        r, z, n = np.split(t, 3, 0)
        return np.concatenate([z, r, n], 0)

    w = {"w_ih": (3 * HIDDEN, SIZE), "w_hh": (3 * HIDDEN, HIDDEN), "b_ih": (3 * HIDDEN,),
         "b_hh": (3 * HIDDEN,)}
    w = {k: (rng.standard_normal(s) * 0.2).astype(np.float32) for k, s in w.items()}
    w.update(W=zrh(w["w_ih"])[None], R=zrh(w["w_hh"])[None],
             B=np.concatenate([zrh(w["b_ih"]), zrh(w["b_hh"])])[None],
             axis0=np.array([0], np.int64), bound=np.array(1e3, np.float32),
             trips=np.array(STEPS, np.int64), go=np.array(True))
    return [numpy_helper.from_array(v, k) for k, v in w.items()]


def loop_model(step, inits: list) -> onnx.ModelProto:
    """`Loop` over `STEPS` inputs xs[t], carrying h through `step`."""
    body = oh.make_graph(
        [oh.make_node("Gather", ["xs", "t"], ["x"], axis=0), *step("x", "h", "h2", "c_"),
         oh.make_node("Identity", ["cond"], ["cond2"])], "body",
        [oh.make_tensor_value_info("t", TensorProto.INT64, []),
         oh.make_tensor_value_info("cond", TensorProto.BOOL, []),
         oh.make_tensor_value_info("h", F, [1, HIDDEN])],
        [oh.make_tensor_value_info("cond2", TensorProto.BOOL, []),
         oh.make_tensor_value_info("h2", F, [1, HIDDEN])])
    g = oh.make_graph([oh.make_node("Loop", ["trips", "go", "h0"], ["hT"], body=body)], "g",
                      [oh.make_tensor_value_info("xs", F, [STEPS, 1, SIZE]),
                       oh.make_tensor_value_info("h0", F, [1, HIDDEN])],
                      [oh.make_tensor_value_info("hT", F, [1, HIDDEN])],
                      inits)
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = o.inter_op_num_threads = 1
    o.log_severity_level = 3  # each form leaves the other forms' weights unread
    return ort.InferenceSession(model.SerializeToString(), o,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3000)
    rounds = ap.parse_args().rounds
    rng = np.random.default_rng(0)
    inits = _weights(rng)
    forms = {"cell": _cell, "GRU": _gru, "guarded": _guarded}
    sessions = {k: _session(loop_model(f, inits)) for k, f in forms.items()}
    feed = {"xs": rng.standard_normal((STEPS, 1, SIZE)).astype(np.float32),
            "h0": np.tanh(rng.standard_normal((1, HIDDEN))).astype(np.float32)}
    nan = dict(feed, xs=np.where(np.arange(SIZE) == 3, np.nan, feed["xs"]).astype(np.float32))
    for k, s in sessions.items():
        print(f"{k:8s} on a NaN input: h = {s.run(None, nan)[0].ravel()[:3]}")
    times: dict[str, list] = {k: [] for k in forms}
    for _ in range(rounds):
        order = list(forms)
        random.shuffle(order)
        for k in order:
            start = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append(time.perf_counter() - start)
    base = statistics.median(times["cell"])
    for k, t in times.items():
        print(f"{k:8s} median {statistics.median(t) * 1e6:7.2f} us  vs cell "
              f"{statistics.median(t) / base:.3f}")


if __name__ == "__main__":
    main()
