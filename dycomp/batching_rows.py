"""Row-wise analysis of one FX region for batching (`dycomp/batching.py`).

With the inputs batched along dim 0, a region is *row-wise* when each output row depends
only on the same input row. Every FX value gets a state: `const` (no input data),
`rows` (dim 0 is the batch) or `reduced` (a per-sample scalar: a reduction over the whole
value, dim 0 included, such as `p.max()`; exact at batch 1, shared by the batch when
batched). A `reduced` value broadcast back over rows, a reduction or reshape that mixes
dim 0 into a tensor, or an op this table does not know makes the region not row-wise,
with the node and its source line as the reason. Conservative by design: an unknown op
is never assumed row-wise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn

CONST, ROWS, REDUCED = "const", "rows", "reduced"


@dataclass(frozen=True)
class State:
    kind: str  # CONST, ROWS or REDUCED
    origin: str = ""  # REDUCED: where the per-sample scalar was made ("net.py:42: max")
    host: bool = False  # a Python value of the host program (not a tensor of a region)


class NotRowwise(Exception):
    """A node that mixes rows; the message names it and its source line."""


# Modules that act on each row alone (eval mode; norms over non-batch dims).
_ROW_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear,
    nn.LayerNorm, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Embedding, nn.GRUCell, nn.LSTMCell,
    nn.RNNCell, nn.Dropout, nn.Softmax, nn.LogSoftmax,
)
_TRAINING_SENSITIVE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout)
_RNNS = (nn.GRU, nn.LSTM, nn.RNN)
_BATCH_FIRST = _RNNS + (nn.MultiheadAttention, nn.TransformerEncoderLayer)

# Functions and methods that act elementwise or per row (dim arguments never 0 checked
# below for the softmax family).
_ELEMENTWISE = {
    "add", "sub", "mul", "div", "truediv", "floordiv", "true_divide", "pow", "neg", "abs",
    "exp", "log", "sqrt", "rsqrt", "sin", "cos", "relu", "relu_", "sigmoid", "tanh", "gelu",
    "silu", "elu", "leaky_relu", "hardswish", "softplus", "clamp", "clip", "where", "gt",
    "ge", "lt", "le", "eq", "ne", "logical_and", "logical_or", "logical_not", "float",
    "int", "long", "bool", "half", "double", "to", "type_as", "contiguous", "clone",
    "detach", "__rsub__", "__radd__", "__rmul__", "__rtruediv__", "__and__", "__or__",
    "__invert__", "maximum", "minimum", "sign", "floor", "ceil", "round", "reciprocal",
    "dropout", "masked_fill", "zeros_like", "ones_like", "full_like", "sub_", "add_",
    "mul_", "div_", "copy_", "fill_", "masked_fill_", "iadd", "isub", "imul", "itruediv",
    "lerp", "addcmul", "layer_norm", "linear", "conv1d", "conv2d", "interpolate",
    "adaptive_avg_pool2d", "adaptive_avg_pool1d", "avg_pool2d", "max_pool2d", "embedding",
    "isnan", "isinf", "isfinite", "nan_to_num", "erf", "square",
}
_SOFTMAX = {"softmax", "log_softmax", "cumsum", "cumprod", "argsort", "sort", "topk"}
_REDUCTIONS = {"mean", "sum", "max", "min", "amax", "amin", "argmax", "argmin", "std", "var",
               "any", "all", "norm", "prod", "logsumexp", "count_nonzero", "median"}
_FACTORIES = {"full", "zeros", "ones", "arange", "tensor", "empty", "randn", "rand",
              "new_zeros", "new_ones", "new_full", "new_tensor", "size", "dim", "numel"}
_VIEWS = {"reshape", "view", "flatten", "unsqueeze", "squeeze", "expand", "expand_as",
          "repeat", "permute", "transpose", "t", "unflatten", "view_as", "reshape_as",
          "movedim"}
_JOINS = {"cat", "concat", "stack"}
_MATMULS = {"matmul", "bmm", "mm", "matmul_", "einsum", "__matmul__"}


def region_states(gm: fx.GraphModule, inputs: list[State]) -> list[State]:
    """States of the region's outputs given its inputs' states; raises NotRowwise."""
    env = node_states(gm, inputs)
    out = next((n for n in gm.graph.nodes if n.op == "output"), None)
    return [] if out is None else [_arg_state(a, env) for a in out.args[0]]


def node_states(gm: fx.GraphModule, inputs: list[State]) -> dict[fx.Node, State]:
    """The state of every value node of the region (`dycomp/batching_variant.py` rewrites
    the `reduced` ones); raises NotRowwise."""
    env: dict[fx.Node, State] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    env.update(zip(placeholders, inputs))
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "get_attr":
            env[node] = State(CONST)
        else:
            env[node] = _node_state(gm, node, env)
    return env


def _arg_state(a, env) -> State:
    return env.get(a, State(CONST)) if isinstance(a, fx.Node) else State(CONST)


def _where(node: fx.Node) -> str:
    return f"{_line(node) or '?'}: {node.name} ({_op_name(node)})"


def _line(node: fx.Node, depth: int = 0) -> str:
    """The node's source line, or its nearest input's (an unpacking `getitem` has none)."""
    if node.meta.get("line") or depth > 4:
        return node.meta.get("line") or ""
    return next((ln for a in node.all_input_nodes if (ln := _line(a, depth + 1))), "")


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _combine(node: fx.Node, states: list[State]) -> State:
    """An elementwise op over its arguments: a per-sample scalar may not meet rows."""
    rows = any(s.kind == ROWS for s in states)
    reduced = next((s for s in states if s.kind == REDUCED), None)
    if rows and reduced is not None:
        raise NotRowwise(f"{_where(node)} combines rows with the per-sample scalar made at "
                         f"{reduced.origin}; batched, that scalar would be the whole batch's")
    return reduced or (State(ROWS) if rows else State(CONST))


def _node_state(gm, node: fx.Node, env) -> State:
    args = _flat_states(node, env)
    if not any(s.kind != CONST for s in args):
        return State(CONST)  # no input data reaches it
    if node.op == "call_module":
        return _module_state(gm.get_submodule(node.target), node, args)
    name = _op_name(node)
    if name in ("getitem", "__getitem__"):
        return _getitem_state(node, env)
    if name in _ELEMENTWISE or name in _FACTORIES:
        return _combine(node, args)
    if name in _SOFTMAX:
        return _dim_op(node, args, reduce=False)
    if name in _REDUCTIONS:
        return _dim_op(node, args, reduce=True)
    if name in _VIEWS:
        return _view_state(node, args)
    if name in _JOINS:
        return _join_state(node, args)
    if name in _MATMULS:
        return _matmul_state(node, args)
    if name in ("setitem", "__setitem__"):
        return _setitem_state(node, env)
    raise NotRowwise(f"{_where(node)}: not known to keep rows apart")


def _flat_states(node: fx.Node, env) -> list[State]:
    out: list[State] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(_arg_state(n, env)))
    return out


def _module_state(mod: nn.Module, node, args) -> State:
    if isinstance(mod, _TRAINING_SENSITIVE) and mod.training:
        raise NotRowwise(f"{_where(node)}: {type(mod).__name__} in training mode mixes rows")
    if isinstance(mod, _BATCH_FIRST) and not getattr(mod, "batch_first", False):
        raise NotRowwise(f"{_where(node)}: {type(mod).__name__} without batch_first=True "
                         "takes the batch in dim 1")
    if isinstance(mod, _RNNS):
        _rnn_rows(mod, node)
    if isinstance(mod, _ROW_MODULES + _TRAINING_SENSITIVE + _BATCH_FIRST):
        return _combine(node, args)
    if isinstance(mod, nn.Flatten):
        return _view_state(node, args)
    raise NotRowwise(f"{_where(node)}: module {type(mod).__name__} is not known to keep "
                     "rows apart")


def _rnn_rows(mod: nn.Module, node: fx.Node) -> None:
    """A batch_first GRU / LSTM / RNN keeps rows apart only in its per-step output: its
    initial and final hidden states are [layers, batch, hidden], the batch in dim 1."""
    name = type(mod).__name__
    if len(node.args) > 1 or node.kwargs.get("hx") is not None:
        raise NotRowwise(f"{_where(node)}: {name}'s initial hidden state has the batch in "
                         "dim 1")
    for user in node.users:
        if not (_op_name(user) in ("getitem", "__getitem__") and len(user.args) > 1
                and user.args[1] == 0):
            raise NotRowwise(f"{_where(node)}: {name}'s final hidden state has the batch in "
                             "dim 1")


def _example(n):
    return n.meta.get("example") if isinstance(n, fx.Node) else None


def _ndim(n) -> int | None:
    ex = _example(n)
    return ex.dim() if isinstance(ex, torch.Tensor) else None


def _dims(node: fx.Node) -> list[int] | None:
    """The dims a dim-taking op names (normalized), or None for all of them."""
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dim, fx.Node) or not isinstance(dim, (int, tuple, list)) or isinstance(
            dim, bool):
        return None
    ndim = _ndim(node.args[0]) or 1
    return [d % ndim for d in (dim if isinstance(dim, (tuple, list)) else [dim])]


def _dim_op(node, args, reduce: bool) -> State:
    base = _combine(node, args)
    if base.kind != ROWS:
        return base
    dims = _dims(node)
    if dims is not None and 0 not in dims:
        return base
    if not reduce:
        raise NotRowwise(f"{_where(node)} works along dim 0, the batch")
    return State(REDUCED, _where(node))


def _shape(n) -> tuple | None:
    ex = _example(n)
    if isinstance(ex, (tuple, list)) and ex and isinstance(ex[0], torch.Tensor):
        ex = ex[0]
    return tuple(ex.shape) if isinstance(ex, torch.Tensor) else None


def _view_state(node, args) -> State:
    base = _combine(node, args)
    if base.kind != ROWS:
        return base
    src, out = _shape(node.args[0]), _shape(node)
    if not src or not out:
        return State(REDUCED, _where(node))  # the batch dim is gone: one sample's value
    name = _op_name(node)
    if name in ("permute", "transpose", "t", "movedim", "expand", "expand_as", "repeat"):
        if _keeps_dim0(node, name):
            return base
        raise NotRowwise(f"{_where(node)} moves or repeats dim 0, the batch")
    if out[0] == src[0] and _prod(out[1:]) == _prod(src[1:]):
        return base
    raise NotRowwise(f"{_where(node)} reshapes {list(src)} to {list(out)}, across dim 0")


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _keeps_dim0(node, name) -> bool:
    a = list(node.args[1:])
    if name in ("transpose", "movedim"):
        nd = _ndim(node.args[0]) or 1
        return len(a) >= 2 and all(isinstance(d, int) and d % nd != 0 for d in a[:2])
    if name == "permute":
        perm = a[0] if len(a) == 1 and isinstance(a[0], (tuple, list)) else a
        return bool(perm) and perm[0] == 0
    if name in ("expand", "repeat"):
        sizes = a[0] if len(a) == 1 and isinstance(a[0], (tuple, list)) else a
        src = _shape(node.args[0])
        return bool(sizes) and src is not None and sizes[0] in (-1, 1) and src[0] == 1 and (
            name == "expand" or sizes[0] == 1)
    return False


def _join_state(node, args) -> State:
    base = _combine(node, args)
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    nd = _ndim(node) or 1
    if base.kind != ROWS or (isinstance(dim, int) and dim % nd != 0):
        return base
    raise NotRowwise(f"{_where(node)} joins along dim 0, the batch")


def _matmul_state(node, args) -> State:
    base = _combine(node, args)
    if base.kind != ROWS:
        return base
    if _op_name(node) == "einsum":
        raise NotRowwise(f"{_where(node)}: einsum is not analysed")
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if args[-1].kind == CONST or all((_ndim(t) or 0) >= 3 for t in tensors):
        return base  # rows @ weights, or batched matrices with dim 0 the batch
    raise NotRowwise(f"{_where(node)} multiplies along dim 0, the batch")


def _getitem_state(node, env) -> State:
    src = node.args[0]
    state = _arg_state(src, env)
    index = node.args[1] if len(node.args) > 1 else None
    if isinstance(_example(src), (tuple, list)) or state.kind != ROWS:
        return state if not isinstance(index, fx.Node) else _combine(
            node, [state, _arg_state(index, env)])
    first = index[0] if isinstance(index, tuple) and index else index
    if isinstance(first, slice) and first == slice(None):
        idx_states = []
        fx.node.map_arg(index, lambda n: idx_states.append(_arg_state(n, env)))
        return _combine(node, [state] + idx_states)
    if first is Ellipsis and isinstance(index, tuple) and len(index) > 1 and all(
            not isinstance(i, fx.Node) for i in index):
        return state
    if isinstance(first, int):
        return State(REDUCED, _where(node))  # one sample's entry: the batch dim is gone
    raise NotRowwise(f"{_where(node)} indexes dim 0, the batch, with {first!r}")


def _setitem_state(node, env) -> State:
    target = node.args[0]
    index = node.args[1] if len(node.args) > 1 else None
    first = index[0] if isinstance(index, tuple) and index else index
    states = _flat_states(node, env)
    if _arg_state(target, env).kind == ROWS and not (isinstance(first, slice) and
                                                      first == slice(None)):
        raise NotRowwise(f"{_where(node)} writes into dim 0, the batch, at {first!r}")
    return _combine(node, states)

