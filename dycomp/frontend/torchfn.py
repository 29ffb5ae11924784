"""Recording tensor operations into the open region (`__torch_function__`)."""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_map

from dycomp.frontend import exportable
from dycomp.frontend.dynindex import getitem as dyn_getitem
from dycomp.frontend.dynindex import has_host_index
from dycomp.frontend.host_split import host_sizes, split_on_host
from dycomp.frontend.hostlists import host_join, is_host_join
from dycomp.frontend.randomness import INPLACE, check_generator, multinomial, rewrite
from dycomp.frontend.symdims import out_syms
from dycomp.frontend.values import HVal, TVal

# Operations whose result is static metadata (shapes, dtypes), answered from the example.
_META = {"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex",
         "element_size", "stride", "is_contiguous", "get_device", "__len__", "type",
         "is_signed", "data_ptr", "__repr__", "__format__", "__str__", "__hash__"}
_META_ATTRS = {"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "layout",
               "is_leaf", "is_sparse", "is_quantized", "is_meta", "names", "grad_fn", "grad"}
_ALIASES = {"data", "detach_"}  # `.detach()` stays an op: passes match it (straight-through)
_SHAPE = {"size", "numel", "nelement", "__len__", "shape", "stride"}
_INPLACE_DUNDER = {"__iadd__": "add", "__isub__": "sub", "__imul__": "mul",
                   "__itruediv__": "div", "__ifloordiv__": "floor_divide", "__imod__": "remainder",
                   "__ipow__": "pow", "__iand__": "bitwise_and", "__ior__": "bitwise_or",
                   "__ixor__": "bitwise_xor", "__ilshift__": "bitwise_left_shift",
                   "__irshift__": "bitwise_right_shift", "__imatmul__": "matmul"}


# Creation functions recorded into the region when the model's code calls them, even with
# static arguments: their results may be updated in place afterwards (`u = torch.empty(3);
# u.uniform_()`, `z[i] = v`, `z.fill_(t.item())`), which only a traced value records.
FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.empty_like,
                       torch.zeros_like, torch.ones_like, torch.full_like})


def is_factory(f) -> bool:
    try:
        return f in FACTORIES
    except TypeError:  # unhashable callables
        return False


def setitem(t: torch.Tensor, index, value) -> torch.Tensor:
    """Functional `t[index] = value` (in-place assignment becomes a new value)."""
    out = t.clone()
    out[index] = value
    return out


def fill(t: torch.Tensor, value) -> torch.Tensor:
    """Functional `t.fill_(value)`."""
    return t.clone().fill_(value)


def copy(t: torch.Tensor, src, non_blocking=False) -> torch.Tensor:
    """Functional `t.copy_(src)` (broadcast to `t`'s shape, cast to its dtype)."""
    return src.to(dtype=t.dtype).expand_as(t).clone()


def zero(t: torch.Tensor) -> torch.Tensor:
    """Functional `t.zero_()`."""
    return torch.zeros_like(t)


def fill_diagonal(t: torch.Tensor, fill_value, wrap=False) -> torch.Tensor:
    """Functional `t.fill_diagonal_(...)`."""
    return t.clone().fill_diagonal_(fill_value, wrap)


# In-place tensor methods without an out-of-place twin (`Tensor.fill` does not exist).
_FUNCTIONAL = {"fill_": fill, "copy_": copy, "zero_": zero, "fill_diagonal_": fill_diagonal}


def _name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", "")
    return name


def _is_method(func, name) -> bool:
    return getattr(torch.Tensor, name, None) is func or getattr(torch._C.TensorBase, name,
                                                                None) is func


def _unwrap(v):
    if isinstance(v, TVal):
        return v._ex
    if isinstance(v, HVal):
        from dycomp.frontend.tracer import _as_tensor

        return _as_tensor(v._ex)
    return v


def torch_function(tr, func, args, kwargs):
    name = _name(func)
    getter = getattr(func, "__name__", "") == "__get__"
    self_ = args[0] if args else None
    if name in ("__bool__", "__int__", "__float__", "__index__", "__complex__"):
        tr.fail(f"data-dependent `{name[2:-2]}()` of a tensor in code dycomp does not convert",
                "call it in the model's own code (it is converted there), or keep it a tensor")
    if name in ("item", "tolist", "numpy") and isinstance(self_, TVal):
        return _to_host(tr, name, self_)
    if name in _ALIASES and isinstance(self_, TVal) and _is_alias(func, name, getter):
        return self_  # `.data`: the value itself (capture records no autograd)
    if name == "__set__" and getattr(getattr(func, "__self__", None), "__name__", "") == "data":
        return _set_data(tr, self_, args[1])
    if name == "type" and (len(args) > 1 or kwargs) and isinstance(self_, TVal):
        return record(tr, func, args, kwargs, name=name)  # `x.type(dtype)`: a cast
    if name in _META or (getter and name in _META_ATTRS):
        if name in _SHAPE and isinstance(self_, TVal) and self_._sym:
            return _sym_shape(tr, name, self_, args[1:], kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if isinstance(self_, TVal) and host_sizes(name, args, kwargs) is not None:
        return split_on_host(tr, self_, host_sizes(name, args, kwargs), args, kwargs)
    if name == "__iter__" and isinstance(self_, TVal):
        if 0 in self_._sym:
            tr.fail("iterating over a tensor whose length changes at run time",
                    "iterate over it in a list comprehension (run by the host), or index it")
        return iter(torch.unbind(self_, 0))
    if name in ("multinomial",) + tuple(INPLACE) or kwargs.get("generator") is not None:
        return _random(tr, func, name, args, kwargs)
    if rewrite(func, name) is not None:
        return rewrite(func, name)(*args, **kwargs)
    if is_host_join(func, args):
        return host_join(tr, func, args, kwargs)
    if name == "__getitem__" and isinstance(self_, TVal) and has_host_index(args[1]):
        return dyn_getitem(tr, self_, args[1])
    if name == "__setitem__":
        return _inplace(tr, setitem, args, kwargs, self_)
    if name in _INPLACE_DUNDER:
        return _inplace(tr, getattr(torch.Tensor, _INPLACE_DUNDER[name]), args, kwargs, self_)
    if name.endswith("_") and not name.startswith("_") and _is_method(func, name):
        pure = (exportable.REPLACE.get(name[:-1]) or getattr(torch.Tensor, name[:-1], None)
                or _FUNCTIONAL.get(name))
        if pure is not None:
            return _inplace(tr, pure, args, kwargs, self_)
        tr.fail(f"in-place .{name}() of a traced tensor (it would not update the tensor)",
                "use an out-of-place form")
    if kwargs.get("inplace") is True:
        return _inplace(tr, func, args, dict(kwargs, inplace=False), self_)
    if name.endswith("_") and hasattr(torch, name[:-1]) and getattr(torch, name) is func:
        return _inplace(tr, getattr(torch, name[:-1]), args, kwargs, self_)
    if name in exportable.REPLACE and not getter:
        return record(tr, exportable.REPLACE[name], args, kwargs, name=name)
    return record(tr, func, args, kwargs, getter=getter, name=name)


def _random(tr, func, name, args, kwargs):
    """Draws ONNX can express: in-place ones out of place, multinomial as a batch."""
    check_generator(tr, kwargs)
    if name == "multinomial":
        return multinomial(tr, *args, **kwargs)
    if name in INPLACE and _is_method(func, name):
        return _assign(tr, INPLACE[name](*args, **kwargs), args[0])
    return record(tr, func, args, kwargs, name=name)


def _is_alias(func, name, getter) -> bool:
    """`t.data`, `t.detach_()`: the same tensor without autograd history."""
    if name == "data":
        return getter
    return _is_method(func, name) or getattr(torch, name, None) is func


def _set_data(tr, target, value):
    """`t.data = value` (`t` a TVal: only its setter dispatches here): `t` holds `value`
    from now on (an in-place update of `t`)."""
    if not isinstance(value, TVal):
        if not isinstance(value, torch.Tensor):
            tr.fail(f"assignment of a {type(value).__name__} to `.data`",
                    "assign a tensor to `.data`")
        value = tr.const_tensor(value)
    tr.journal.append((target, target._state()))
    target._set_state(value._state())
    target._mutated = True


def _inplace(tr, func, args, kwargs, target):
    return _assign(tr, record(tr, func, args, kwargs), target, func is setitem)


def _assign(tr, out, target, none=False):
    """`target` now holds `out` (an in-place update, undone per branch arm)."""
    if not isinstance(target, TVal):
        tr.fail("in-place update of a tensor that is not traced (a parameter or constant)",
                "do not mutate weights inside forward")
    tr.journal.append((target, target._state()))
    target._set_state((out._ex, out._region, out._node, None, target._sym | out._sym,
                       target._maybe_none))
    target._mutated = True
    return None if none else target


def record(tr, func, args, kwargs, getter=False, name=None):
    """Run `func` on example values and add the op to the open region."""
    what = name or _name(func)

    def add(graph, fx_args, fx_kwargs):
        if getter:
            return graph.call_function(getattr, (fx_args[0], name))
        if name and _is_method(func, name):
            return graph.call_method(name, tuple(fx_args), fx_kwargs)
        if _py_dunder(func):  # `Tensor.__pow__` is torch._tensor's `pow`: FX cannot name it
            return graph.call_method(_py_dunder(func), tuple(fx_args), fx_kwargs)
        return graph.call_function(func, tuple(fx_args), fx_kwargs)

    return _trace_op(tr, func, args, kwargs, f"tensor operation {what}", add)


def _py_dunder(func) -> str | None:
    """The `torch.Tensor` attribute name of an operator written in Python (torch/_tensor.py)."""
    try:
        return _PY_DUNDERS.get(func)
    except TypeError:  # unhashable
        return None


_PY_DUNDERS = {v: k for k, v in vars(torch.Tensor).items()
               if k.startswith("__") and callable(v)
               and getattr(v, "__module__", "") == "torch._tensor"}


def call_module(tr, module, args, kwargs):
    """A torch.nn leaf module applied to traced tensors becomes one call_module node."""
    def add(graph, fx_args, fx_kwargs):
        return graph.call_module(tr.region().attr(module), tuple(fx_args), fx_kwargs)

    return _trace_op(tr, module, args, kwargs, type(module).__name__, add)


def _trace_op(tr, fn, args, kwargs, what, add_node):
    """Compute `fn` on the example values, then add its node (`add_node`) to the open
    region with the user's source line."""
    from dycomp.frontend.tracer import user_frame

    ex_args, ex_kwargs = tree_map(_unwrap, args), tree_map(_unwrap, kwargs)
    try:
        with torch._C.DisableTorchFunctionSubclass():
            out = fn(*ex_args, **ex_kwargs)
    except Exception as e:
        tr.fail(f"{what} failed on the example inputs: {e}")
    syms = out_syms(fn, _name(fn), args, kwargs, out)
    region = tr.region()
    node = add_node(region.graph, tree_map(tr.node_of, args), tree_map(tr.node_of, kwargs))
    node.meta["line"] = line = user_frame()
    if line and line not in region.lines:
        region.lines.append(line)
    res = wrap(tr, region, node, out, what)
    _set_syms(res, syms)
    return res


def _set_syms(res, syms) -> None:
    """Mark the varying dims of the op's tensor results (and of their nodes, so that a
    region they leave exports them as dynamic; `[]` on a node: none vary)."""
    vals = [v for v in tree_flatten(res)[0] if isinstance(v, TVal)]
    for i, v in enumerate(vals):
        sym = syms[i] if syms is not None and i < len(syms) else frozenset()
        if syms is not None:
            v._sym = sym
        if v._node is not None:
            v._node.meta["sym"] = sorted(sym)


def wrap(tr, region, node, out, what):
    if isinstance(out, torch.Tensor):
        node.meta["example"] = out
        return TVal(out, region, node)
    if isinstance(out, (tuple, list)) and tree_flatten(out)[0] and all(
            isinstance(o, torch.Tensor) or o is None for o in out):
        items = []
        for i, o in enumerate(out):
            if o is None:
                items.append(None)
                continue
            n = region.graph.call_function(operator.getitem, (node, i))
            n.meta["example"] = o
            items.append(TVal(o, region, n))
        if hasattr(out, "_fields") or type(out).__module__ == "torch.return_types":
            return type(out)(items)
        return type(out)(items) if isinstance(out, list) else tuple(items)
    if _nested_tensors(out):
        return _split_nested(region, node, out)
    leaves = tree_flatten(out)[0]
    if any(isinstance(x, torch.Tensor) for x in leaves):
        tr.fail(f"{what} returns a nested structure of tensors dycomp cannot split")
    tr.fail(f"{what} returns a data-dependent Python value ({type(out).__name__})",
            "keep the result a tensor, or convert it with .item() in the model's code")


def _nested_tensors(out, depth=0) -> bool:
    """Tuples/lists of tensors, Nones and such tuples (`nn.LSTM`: `out, (h, c)`)."""
    if isinstance(out, torch.Tensor) or out is None:
        return depth > 0
    if depth < 4 and isinstance(out, (tuple, list)) and out:
        return all(_nested_tensors(o, depth + 1) for o in out)
    return False


def _split_nested(region, node, out):
    """One `getitem` node per element, recursively."""
    if out is None:
        return None
    if isinstance(out, torch.Tensor):
        node.meta["example"] = out
        return TVal(out, region, node)
    items = []
    for i, o in enumerate(out):
        n = region.graph.call_function(operator.getitem, (node, i)) if o is not None else None
        items.append(_split_nested(region, n, o))
    if hasattr(out, "_fields") or type(out).__module__ == "torch.return_types":
        return type(out)(items)
    return items if isinstance(out, list) else tuple(items)


def _sym_shape(tr, name, t, args, kwargs):
    """Shape queries on a tensor whose shape changes across loop iterations: the
    changing dimensions are host values read at run time."""
    ex = t._ex
    dim = args[0] if args else kwargs.get("dim")

    def size(d):
        d = d % ex.dim()
        if d not in t._sym:
            return ex.shape[d]
        return tr.host_op("shape", (t, d), lambda a, k: a.shape[k])

    if name == "size" and dim is not None:
        return size(dim)
    if name in ("size", "shape"):
        return tuple(size(d) for d in range(ex.dim()))
    if name == "__len__":
        return size(0)
    if name in ("numel", "nelement"):
        return tr.host_op("numel", (t,), lambda a: a.size)
    tr.fail(f"{name}() of a tensor whose shape changes across loop iterations")


def _to_host(tr, name, t):
    if name == "item":
        return tr.host_op("item", (t,), lambda a: a.item())
    if name == "tolist":
        n = t._ex.shape[0] if t._ex.dim() > 0 and 0 not in t._sym else None
        return tr.host_op("tolist", (t,), lambda a: a.tolist(), static_len=n)
    return HVal(tr.export(t), t._ex.numpy())


TENSOR_CTORS = (torch.tensor, torch.as_tensor, torch.asarray)


def tensor_ctor(tr, func, args, kwargs):
    """`torch.tensor(t)` / `torch.as_tensor(t)` of a traced `t`: a copy of (or the same)
    value, traced; of a host scalar (`x.sum().item()`): a tensor made on the host. The
    constructor itself would copy the example value into a constant."""
    data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
    dtype, device = kwargs.get("dtype"), kwargs.get("device")
    if isinstance(data, HVal) and isinstance(data._ex, (bool, int, float, np.generic)):
        dtype = dtype or torch.tensor(data._ex).dtype
        name = str(dtype).replace("torch.", "")
        return tr.host_op("asarray", (data, name), lambda a, n: np.asarray(a, dtype=n))
    if not isinstance(data, TVal):
        tr.fail(f"torch.{func.__name__} of a list holding data-dependent values (it would "
                "copy their example values)", "use torch.stack of tensors")
    out = data.detach().clone() if func is torch.tensor else data
    if dtype is not None or device is not None:
        out = out.to(device=device, dtype=dtype)
    return out
