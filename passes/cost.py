"""A static cost model for FX nodes, shared by the dynamic-aware passes.

The passes compare the work a rewrite saves or adds with what a host dispatch costs.
The constants were measured on the project's 2-core CPU with ONNX Runtime at batch 1
(`python benchmarks/cost_model.py` prints them again; 2026-11-22: dispatch 6.4 us, 0.24
us per op, 24,000 FLOP/us for a 16-channel 3x3 convolution on 8x8, 93,000 for 32
channels on 16x16, 107,000 for a 64x256x256 matmul):

- `DISPATCH_US`: one host-dispatched region call through dycomp's executor, plus the
  host's `bool()` and `if`.
- `IF_US`: an ONNX `If` node inside a session (benchmarks/README.md, "Cost rules": ~1
  us; gated54's 8,448-weight arms ran faster as `If` than computed and selected).
- `OP_US`: the fixed cost of one more node inside a session (launch, allocation), also
  used for one more input bound to a call.
- `FLOP_PER_US`: fp32 throughput of the small layers the zoo is made of (larger layers
  run up to 4x faster, so the estimated time of big work is pessimistic).

Estimates are rough (within ~2x); the rules that use them decide with margins.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import fx, nn

DISPATCH_US = 6.5
IF_US = 1.5
OP_US = 0.3
FLOP_PER_US = 25_000.0

FREE = {"view", "reshape", "unsqueeze", "squeeze", "flatten", "expand", "expand_as",
        "permute", "transpose", "t", "contiguous", "detach", "getitem", "size", "dim",
        "float", "to", "type_as"}


def kind(n: fx.Node) -> str:
    """The operation of a node, normalized: `mul` for `a * b`, `torch.mul`, `Tensor.mul`."""
    if n.op == "call_method":
        name = n.target
    elif n.op == "call_function":
        name = getattr(n.target, "__name__", str(n.target))
    else:
        return n.op
    return name.strip("_")


def node_flops(gm: fx.GraphModule, n: fx.Node) -> float:
    """Floating-point operations of one node, from the example values in its meta."""
    out = _numel(n.meta.get("example"))
    if n.op == "call_module":
        return _module_flops(gm.get_submodule(n.target), n, out)
    k = kind(n)
    if k in ("matmul", "bmm", "mm", "linear", "conv2d", "conv1d", "einsum"):
        a = n.args[0].meta.get("example") if isinstance(n.args[0], fx.Node) else None
        inner = a.shape[-1] if isinstance(a, torch.Tensor) and a.dim() else 1
        if k.startswith("conv") and isinstance(n.args[1], fx.Node):
            w = n.args[1].meta.get("example")
            inner = math.prod(w.shape[1:]) if isinstance(w, torch.Tensor) else inner
        return 2.0 * out * inner
    return float(out)


def node_us(gm: fx.GraphModule, n: fx.Node) -> float:
    """Estimated time of one node in microseconds (0 for free reshapes and inputs)."""
    if n.op not in ("call_function", "call_method", "call_module") or kind(n) in FREE:
        return 0.0
    return OP_US + node_flops(gm, n) / FLOP_PER_US


def nodes_us(gm: fx.GraphModule, nodes) -> float:
    return sum(node_us(gm, n) for n in nodes)


def region_us(region) -> float:
    """Estimated time of a whole region (0 for regions that exist only as ONNX)."""
    if region.gm is None:
        return 0.0
    return nodes_us(region.gm, region.gm.graph.nodes)


def _module_flops(mod: nn.Module, n: fx.Node, out: int) -> float:
    if isinstance(mod, nn.modules.conv._ConvNd):
        return 2.0 * out * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
    if isinstance(mod, nn.Linear):
        return 2.0 * out * mod.in_features
    if isinstance(mod, (nn.RNNCellBase, nn.RNNBase)):
        return 2.0 * sum(p.numel() for p in mod.parameters()) * _steps(n)
    if isinstance(mod, nn.Embedding):
        return float(out)
    return 2.0 * out


def _steps(n: fx.Node) -> int:
    """Batch x sequence length an RNN module runs over (its first input's leading dims)."""
    x = n.args[0].meta.get("example") if n.args and isinstance(n.args[0], fx.Node) else None
    return math.prod(x.shape[:-1]) if isinstance(x, torch.Tensor) and x.dim() > 1 else 1


def _numel(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (tuple, list)):
        return sum(_numel(v) for v in x)
    return 1


@functools.cache
def cpu_features() -> dict[str, bool]:
    """This CPU's SIMD features as numpy's dispatch table names them (`AVX2`, `AVX512F`,
    `AVX512VNNI`, ...): what ONNX Runtime's kernels choose from on the machine compiling."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as cpu
    return dict(cpu)
