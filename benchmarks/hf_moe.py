"""Hugging Face transformers' sparse MoE blocks compiled by dycomp, as a new user would.

Loads `transformers` from a side folder given at run time (`--site`; nothing of it is
copied into the project), builds each block from a tiny config (hidden 32, 4-8 experts,
top-2 or top-1, seeded random weights, eval mode), compiles it with backends torch and
onnx on an input [batch, seq, hidden], and compares both with eager on `--inputs` seeded
inputs (scales 0.3 / 1 / 3, each routing the tokens differently), then on edge inputs:
all-zero rows (router ties), every token alike (one expert hit), a NaN token, another
batch and another seq than the example's (exact, or a clear error; never a wrong output).
Then times eager vs dycomp-onnx (2 threads each; median over rounds of blocks of calls).

The experts run as the library's `@use_experts_implementation` default for a block built
from its config alone (`config._experts_implementation` None: the class's own forward, the
loop over the experts hit); `mixtral-grouped` and `mixtral-batched` set it to
"grouped_mm" (what `from_pretrained` picks) and "batched_mm".

Run: python benchmarks/hf_moe.py --site /work/corpus/_site/transformers523
     [--inputs 60] [--rounds 7] [--calls 20] [--no-time] [name ...]
"""

from __future__ import annotations

import argparse
import inspect
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dycomp  # noqa: E402
from dycomp.check import compare  # noqa: E402

THREADS = 2
HIDDEN = 32
log = logging.getLogger("hf_moe")


def _mixtral(tf, impl=None):
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = tf.MixtralConfig(hidden_size=HIDDEN, intermediate_size=64, num_local_experts=6,
                           num_experts_per_tok=2)
    if impl:
        cfg._experts_implementation = impl
    return MixtralSparseMoeBlock(cfg)


def _qwen2_moe(tf):
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    cfg = tf.Qwen2MoeConfig(hidden_size=HIDDEN, moe_intermediate_size=48,
                            shared_expert_intermediate_size=64, num_experts=8,
                            num_experts_per_tok=2, norm_topk_prob=False)
    return Qwen2MoeSparseMoeBlock(cfg)


def _switch(tf):
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        SwitchTransformersSparseMLP,
    )

    cfg = tf.SwitchTransformersConfig(d_model=HIDDEN, d_ff=64, num_experts=4,
                                      expert_capacity=3)
    return SwitchTransformersSparseMLP(cfg)


def _olmoe(tf):
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

    cfg = tf.OlmoeConfig(hidden_size=HIDDEN, intermediate_size=48, num_experts=8,
                         num_experts_per_tok=2)
    return OlmoeSparseMoeBlock(cfg)


def _deepseek_v3(tf):
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    cfg = tf.DeepseekV3Config(hidden_size=HIDDEN, intermediate_size=64,
                              moe_intermediate_size=32, n_routed_experts=8, n_group=4,
                              topk_group=2, num_experts_per_tok=2, n_shared_experts=1)
    return DeepseekV3MoE(cfg)


BLOCKS = {
    "mixtral": _mixtral,
    "mixtral-grouped": lambda tf: _mixtral(tf, "grouped_mm"),
    "mixtral-batched": lambda tf: _mixtral(tf, "batched_mm"),
    "qwen2_moe": _qwen2_moe,
    "switch": _switch,
    "olmoe": _olmoe,
    "deepseek_v3": _deepseek_v3,
}


def load_transformers(site: str):
    sys.path.insert(0, site)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def build(tf, name: str) -> torch.nn.Module:
    """The block with seeded random weights (N(0, 0.2): the routers' zero init would
    make every top-k a tie), in eval mode."""
    torch.manual_seed(0)
    block = BLOCKS[name](tf)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(std=0.2)
    return block.eval()


def inputs(n: int, shape, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (0.3, 1.0, 3.0)[i % 3] for i in range(n)]


def edge_inputs(shape) -> dict:
    g = torch.Generator().manual_seed(99)
    x = torch.randn(shape, generator=g)
    zeros = x.clone()
    zeros[:, ::2] = 0  # router logits all 0: every top-k a tie
    alike = x[:, :1].expand(shape).contiguous()  # every token routed alike: one expert
    nan = x.clone()
    nan[0, 1, 3] = float("nan")
    return {"ties": zeros, "alike": alike, "nan": nan}


def check(block, cm, xs) -> tuple[int, list]:
    """How many of `xs` match eager, and the first differences."""
    ok, bad = 0, []
    for i, x in enumerate(xs):
        with torch.no_grad():
            expected = block(x)
        diff = compare(expected, cm(x))
        if diff is None:
            ok += 1
        elif len(bad) < 3:
            bad.append(f"input {i}: {diff}")
    return ok, bad


def other_shape(block, cm, shape) -> str:
    """A call with another shape than the example's: 'ok' (it matches eager), 'error: ...'
    (a clear error) or 'WRONG: ...'."""
    x = inputs(1, shape, seed=7)[0]
    try:
        actual = cm(x)
    except (ValueError, dycomp.UnsupportedError) as e:
        return f"error: {type(e).__name__}: {str(e)[:70]}"
    with torch.no_grad():
        diff = compare(block(x), actual)
    return "ok" if diff is None else f"WRONG: {diff}"


def dynamic(block, x0, backend: str, n: int) -> str:
    """Compiled with batch and seq dynamic (`dynamic_dims`), checked on `n` inputs of each
    of several [batch, seq]."""
    name = next(iter(inspect.signature(block.forward).parameters))
    try:
        cm = dycomp.compile(block, (x0,), backend=backend, threads=THREADS,
                            dynamic_dims={name: {0: "batch", 1: "seq"}})
    except dycomp.UnsupportedError as e:
        return f"UnsupportedError: {str(e)[:160]}"
    ok = total = 0
    bad = []
    for b, s in ((1, 5), (3, 13), (2, 16), (1, 1)):
        xs = inputs(n, (b, s, HIDDEN), seed=b * 100 + s)
        k, errs = check(block, cm, xs)
        ok, total, bad = ok + k, total + n, bad + errs
    return f"{ok}/{total} at [batch, seq] in (1,5) (3,13) (2,16) (1,1)" + (
        f" {bad[:2]}" if bad else "")


def timed(fns, x, rounds: int, calls: int) -> list:
    """Median ms per call of each of `fns` over `rounds` rounds, each round a block of
    `calls` calls of each function in turn (interleaved: the shared machine's load
    changes between rounds, alike for all)."""
    for fn in fns:
        fn(x)
    per = [[] for _ in fns]
    for _ in range(rounds):
        for fn, times in zip(fns, per):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn(x)
            times.append((time.perf_counter() - t0) / calls * 1e3)
    return [statistics.median(t) for t in per]


def run_block(tf, name: str, args) -> dict:
    block = build(tf, name)
    shape = (args.batch, args.seq, HIDDEN)
    x0 = inputs(1, shape, seed=1000)[0]
    xs = inputs(args.inputs, shape)
    row = {"name": name}
    cms = {}
    for backend in ("torch", "onnx"):
        try:
            t0 = time.perf_counter()
            cm = dycomp.compile(block, (x0,), backend=backend, threads=args.threads)
            row[f"{backend} compile s"] = round(time.perf_counter() - t0, 1)
        except dycomp.UnsupportedError as e:
            row[backend] = f"UnsupportedError: {e}"
            continue
        cms[backend] = cm
        ok, bad = check(block, cm, xs)
        edges = edge_inputs(shape)
        eok, ebad = check(block, cm, list(edges.values()))
        row[backend] = f"{ok}/{len(xs)} + edges {eok}/{len(edges)}"
        row[f"{backend} bad"] = bad + ebad
        row[f"{backend} seq"] = other_shape(block, cm, (args.batch, args.seq * 2 - 3, HIDDEN))
        row[f"{backend} batch"] = other_shape(block, cm, (args.batch + 1, args.seq, HIDDEN))
    for backend in ("torch", "onnx"):
        row[f"{backend} dynamic"] = dynamic(block, x0, backend, args.inputs // 3)
    if "onnx" in cms and not args.no_time:
        with torch.no_grad():
            eager, ours = timed([block, cms["onnx"]], xs[1], args.rounds, args.calls)
        row.update({"eager ms": round(eager, 3), "onnx ms": round(ours, 3),
                    "speedup": round(eager / ours, 2)})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", required=True, help="folder holding transformers and its deps")
    ap.add_argument("--inputs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch's and each session's")
    ap.add_argument("names", nargs="*", default=list(BLOCKS))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    tf = load_transformers(args.site)
    print(f"transformers {tf.__version__}, torch {torch.__version__}, "
          f"x [{args.batch}, {args.seq}, {HIDDEN}], {args.inputs} inputs + 3 edge inputs")
    for name in args.names:
        row = run_block(tf, name, args)
        print(row["name"])
        for k, v in row.items():
            if k != "name":
                print(f"  {k}: {v}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
