"""Quantize: int8 (static QDQ or dynamic) or fp16 regions, with onnxruntime.quantization.

Runs on the regions' ONNX models, after export and before branches are fused. Static
int8 needs activation ranges from every region: `region_inputs` runs the host program
over the calibration inputs and records what each region receives, so regions on rare
paths are calibrated on the inputs that reach them. A region that received no sample
stays fp32 and one that received fewer than `min_samples` is calibrated but reported.

`keep_decisions_fp32`: the nodes of a region that only compute a value the host decides
on (a confidence, a gate) stay fp32, so quantization error does not flip decisions; the
rest of that region (the convolutions feeding both) is still quantized.

`reduce_range` (int8): 7-bit weights. ONNX Runtime's uint8 x int8 kernels on x86 CPUs
without VNNI add pairs of products in 16 bits (VPMADDUBSW), which saturates with full
8-bit weights; by default (None) weights are 7-bit exactly on such CPUs. Measured on an
AVX2 EPYC (path agreement with fp32 over 48 inputs, 8-bit -> 7-bit): act 0.44 -> 0.88
(largest logit error 40 % -> 23 % of the logits' range), policy_net 0.77 -> 0.79,
gated_resnet 0.81 -> 0.94, multi_exit 0.96 -> 0.94.

`only_if_faster` (static int8): each subgraph's int8 form is timed against its fp32 form
on its calibration inputs and kept only if faster (`KEEP_IF_FASTER`), so quantizing
never slows a model down; the choice depends on timings, so turn it off for
reproducible builds.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from dycomp.errors import UnsupportedError
from dycomp.ir.program import Assign, CallRegion, HostOp, If, expr_vars, walk
from dycomp.passes import cost

log = logging.getLogger(__name__)

DTYPES = ("int8", "fp16")
METHODS = ("minmax", "entropy", "percentile")
HEAVY = {"Conv", "MatMul", "Gemm", "ConvTranspose"}  # worth quantizing a region for
# Dynamic int8 pays for matmuls only: ONNX Runtime's ConvInteger made a CNN 3.6x slower
# here (benchmarks/README.md), so convolutions want static calibration instead.
DYNAMIC_OPS = ["MatMul", "Attention", "LSTM"]
# A statically quantized subgraph replaces the fp32 one only if it runs at least this
# much faster on its calibration inputs: on small convolutions (16-64 channels, batch 1)
# int8 pays a quantize, a dequantize and two layout transposes per subgraph call that
# can exceed the gain (benchmarks/README.md).
KEEP_IF_FASTER = 0.95


@dataclass
class Quantize:
    """Quantize every region to int8 (static with `calibration` input tuples, dynamic
    without) or fp16. Use in `dycomp.compile(..., backend="onnx", passes=[Quantize()])`."""

    dtype: str = "int8"
    calibration: Sequence[tuple] | None = None
    method: str = "minmax"
    per_channel: bool = True
    keep_decisions_fp32: bool = True
    reduce_range: bool | None = None  # 7-bit int8 weights; None: where 8-bit saturates
    min_samples: int = 8
    only_if_faster: bool = True  # static int8: keep a subgraph's int8 form only if faster
    name = "quantize"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"Quantize(dtype={self.dtype!r}): use one of {', '.join(DTYPES)}")
        if self.method not in METHODS:
            raise ValueError(f"Quantize(method={self.method!r}): use one of "
                             f"{', '.join(METHODS)}")
        if self.calibration is not None:
            self.calibration = [s if isinstance(s, tuple) else (s,) for s in self.calibration]
            if not self.calibration:
                raise ValueError("Quantize(calibration=[]): give input tuples, or None for "
                                 "dynamic quantization")
        if self.calibration is not None and self.dtype == "fp16":
            raise ValueError("Quantize(dtype='fp16') takes no calibration data")

    @property
    def seven_bit(self) -> bool:
        """int8 weights with 7 bits (`reduce_range`) on this machine."""
        return int8_saturates() if self.reduce_range is None else self.reduce_range

    @property
    def mode(self) -> str:
        return "fp16" if self.dtype == "fp16" else (
            "static" if self.calibration is not None else "dynamic")


@dataclass
class QuantReport:
    mode: str
    regions: dict[str, str] = field(default_factory=dict)  # region -> what was done
    samples: dict[str, int] = field(default_factory=dict)  # region -> calibration samples
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        done = sum(v.startswith(("int8", "fp16")) for v in self.regions.values())
        slower = sum("measured slower" in v for v in self.regions.values())
        return (f"quantized {done} of {len(self.regions)} subgraphs ({self.mode})"
                + (f"; {slower} kept fp32 where int8 measured slower" if slower else ""))


def region_inputs(graph, compiled, calibration) -> dict[str, list[list[np.ndarray]]]:
    """Region -> the inputs it received while `compiled` (a CompiledModel on the torch
    backend for `graph`) ran each calibration input tuple."""
    seen: dict[str, list] = {name: [] for name in graph.regions}
    executor = compiled.program.executor
    dtypes = {name: [str(p.meta["example"].dtype).replace("torch.", "")
                     for p in r.placeholders] for name, r in graph.regions.items()}

    def record(region, *args):  # host values (Python floats) as the region's dtypes
        seen[region].append([np.asarray(a, dtype=d) for a, d in zip(args, dtypes[region])])
        return executor(region, *args)

    with compiled.program.using(record):
        for sample in calibration:
            compiled.run(*sample)
    return seen


def decision_outputs(graph) -> dict[str, set[int]]:
    """Region -> indices of its outputs that the host's decisions depend on."""
    wanted = {s.cond for s in walk(graph.body) if isinstance(s, If)}
    for s in reversed(list(walk(graph.body))):  # host statements computing conditions
        if isinstance(s, HostOp) and s.out in wanted:
            wanted |= set(s.uses())
        elif isinstance(s, Assign):
            wanted |= {v for d, src in zip(s.dsts, s.srcs) if d in wanted
                       for v in expr_vars(src)}
    out: dict[str, set[int]] = {}
    for s in walk(graph.body):
        if isinstance(s, CallRegion):
            out.setdefault(s.region, set()).update(
                i for i, v in enumerate(s.outs) if v in wanted)
    return out


def quantize_regions(graph, config: Quantize, samples: dict | None) -> QuantReport:
    """Replace each region's `onnx` model by its quantized form, where it helps."""
    report = QuantReport(config.mode)
    decisions = decision_outputs(graph) if config.keep_decisions_fp32 else {}
    for name, region in graph.regions.items():
        model = region.onnx
        wanted = set(DYNAMIC_OPS) if config.mode == "dynamic" else HEAVY
        if not wanted & {n.op_type for n in model.graph.node}:
            report.regions[name] = f"fp32 (no {'/'.join(sorted(wanted))})"
            continue
        if samples is not None:
            report.samples[name] = n = len(samples[name])
            if n == 0:
                report.regions[name] = "fp32 (no calibration input reached it)"
                report.warnings.append(f"subgraph {name} ({', '.join(region.lines[:2])}) "
                                       "received no calibration input: left fp32")
                continue
            if n < config.min_samples:
                report.warnings.append(f"subgraph {name} ({', '.join(region.lines[:2])}) "
                                       f"was calibrated on only {n} input(s)")
        try:
            quantized, keep = _quantize(model, config, samples and samples[name],
                                        decisions.get(name, set()))
        except Exception as e:  # onnxruntime's quantizer failed on this subgraph
            report.regions[name] = f"fp32 (quantizer failed: {type(e).__name__})"
            report.warnings.append(f"subgraph {name} ({', '.join(region.lines[:2])}) left "
                                   f"fp32: onnxruntime.quantization failed: {e}")
            continue
        if samples is not None and config.only_if_faster:
            fp32_us, int8_us = (_time_us(m, samples[name]) for m in (model, quantized))
            if int8_us > fp32_us * KEEP_IF_FASTER:
                report.regions[name] = (f"fp32 (int8 measured slower: {int8_us:.0f} us vs "
                                        f"{fp32_us:.0f} us)")
                continue
        region.onnx = quantized
        report.regions[name] = config.dtype + (f" ({len(keep)} decision nodes fp32)"
                                               if keep else "")
    for w in report.warnings:
        log.warning("%s", w)
    return report


def _decision_only_nodes(model: onnx.ModelProto, outputs: set[int]) -> list[str]:
    """Names of nodes that only the given outputs depend on (named if unnamed)."""
    if not outputs:
        return []
    g = model.graph
    for i, n in enumerate(g.node):
        n.name = n.name or f"{n.op_type}_{i}"
    producer = {o: n for n in g.node for o in n.output}

    def ancestors(names):
        seen, stack = set(), list(names)
        while stack:
            n = producer.get(stack.pop())
            if n is not None and n.name not in seen:
                seen.add(n.name)
                stack += list(n.input)
        return seen

    outs = [o.name for o in g.output]
    decide = ancestors([outs[i] for i in outputs])
    rest = ancestors([o for i, o in enumerate(outs) if i not in outputs])
    return sorted(decide - rest)


def _quantize(model: onnx.ModelProto, config: Quantize, samples, decisions: set[int]):
    """(quantized model, names of the nodes kept fp32 for decisions)."""
    if config.dtype == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        exclude = _decision_only_nodes(model, decisions)
        return convert_float_to_float16(model, keep_io_types=True,
                                        node_block_list=exclude or None), exclude
    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory() as tmp:
        raw, src, dst = (Path(tmp) / f for f in ("raw.onnx", "in.onnx", "out.onnx"))
        onnx.save(model, str(raw))  # a ModelProto given to quant_pre_process is modified
        q.quant_pre_process(str(raw), str(src), skip_symbolic_shape=True)
        prepared = onnx.load(str(src))
        exclude = _decision_only_nodes(prepared, decisions)
        onnx.save(prepared, str(src))
        if samples is None:
            q.quantize_dynamic(str(src), str(dst), per_channel=config.per_channel,
                               reduce_range=config.seven_bit,
                               weight_type=q.QuantType.QInt8, nodes_to_exclude=exclude,
                               op_types_to_quantize=DYNAMIC_OPS)
        else:
            names = [i.name for i in model.graph.input]
            reader = _Reader([dict(zip(names, s)) for s in samples])
            method = {"minmax": q.CalibrationMethod.MinMax,
                      "entropy": q.CalibrationMethod.Entropy,
                      "percentile": q.CalibrationMethod.Percentile}[config.method]
            q.quantize_static(str(src), str(dst), reader, quant_format=q.QuantFormat.QDQ,
                              per_channel=config.per_channel, reduce_range=config.seven_bit,
                              activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, calibrate_method=method,
                              nodes_to_exclude=exclude)
        return onnx.load(str(dst)), exclude


def int8_saturates() -> bool:
    """ONNX Runtime's uint8 x int8 products saturate with 8-bit weights on this CPU: x86
    with AVX2 but no VNNI (see `reduce_range` above)."""
    cpu = cost.cpu_features()
    return bool(cpu.get("AVX2")) and not (cpu.get("AVX512VNNI") or cpu.get("AVXVNNI"))


def _time_us(model: onnx.ModelProto, feeds: list, rounds: int = 3) -> float:
    """Median microseconds per call on the recorded inputs (one intra-op thread)."""
    import time

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = [dict(zip(names, f)) for f in feeds[:16]]
    for f in feeds:
        session.run(None, f)
    times = []
    for _ in range(rounds):
        for f in feeds:
            start = time.perf_counter()
            session.run(None, f)
            times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def check_backend(config: Quantize, backend: str) -> None:
    if backend != "onnx":
        raise UnsupportedError(
            f"Quantize runs on backend 'onnx'; backend {backend!r} cannot run quantized "
            "subgraphs here (TVM 0.27's Relax has no int8 ONNX import for QDQ models)",
            hint="compile with backend='onnx', or drop Quantize")
