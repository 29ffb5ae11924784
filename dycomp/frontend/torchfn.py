"""Recording tensor operations into the open region (`__torch_function__`)."""

from __future__ import annotations

import operator

import torch
from torch.utils._pytree import tree_flatten, tree_map

from dycomp.frontend import exportable
from dycomp.frontend.host_split import host_sizes, split_on_host
from dycomp.frontend.values import HVal, TVal

# Operations whose result is static metadata (shapes, dtypes), answered from the example.
_META = {"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex",
         "element_size", "stride", "is_contiguous", "get_device", "__len__", "type",
         "is_signed", "data_ptr", "__repr__", "__format__", "__str__", "__hash__"}
_META_ATTRS = {"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "layout",
               "is_leaf", "is_sparse", "is_quantized", "is_meta", "names", "grad_fn", "grad"}
_SHAPE = {"size", "numel", "nelement", "__len__", "shape", "stride"}
_INPLACE_DUNDER = {"__iadd__": "add", "__isub__": "sub", "__imul__": "mul",
                   "__itruediv__": "div", "__ifloordiv__": "floor_divide", "__imod__": "remainder",
                   "__ipow__": "pow", "__iand__": "bitwise_and", "__ior__": "bitwise_or",
                   "__ixor__": "bitwise_xor", "__ilshift__": "bitwise_left_shift",
                   "__irshift__": "bitwise_right_shift", "__imatmul__": "matmul"}


def setitem(t: torch.Tensor, index, value) -> torch.Tensor:
    """Functional `t[index] = value` (in-place assignment becomes a new value)."""
    out = t.clone()
    out[index] = value
    return out


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
    if name in _META or (getter and name in _META_ATTRS):
        if name in _SHAPE and isinstance(self_, TVal) and self_._sym:
            return _sym_shape(tr, name, self_, args[1:], kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if getter and name == "data" and isinstance(self_, TVal):  # `.data`: a detached alias
        return record(tr, torch.Tensor.detach, (self_,), {}, name="detach")
    if isinstance(self_, TVal) and host_sizes(name, args, kwargs) is not None:
        return split_on_host(tr, self_, host_sizes(name, args, kwargs), args, kwargs)
    if name == "__iter__" and isinstance(self_, TVal):
        return iter(torch.unbind(self_, 0))
    if name == "__setitem__":
        return _inplace(tr, setitem, args, kwargs, self_)
    if name in _INPLACE_DUNDER:
        return _inplace(tr, getattr(torch.Tensor, _INPLACE_DUNDER[name]), args, kwargs, self_)
    if name.endswith("_") and not name.startswith("_") and _is_method(func, name):
        pure = exportable.REPLACE.get(name[:-1]) or getattr(torch.Tensor, name[:-1], None)
        if pure is not None:
            return _inplace(tr, pure, args, kwargs, self_)
    if kwargs.get("inplace") is True:
        return _inplace(tr, func, args, dict(kwargs, inplace=False), self_)
    if name.endswith("_") and hasattr(torch, name[:-1]) and getattr(torch, name) is func:
        return _inplace(tr, getattr(torch, name[:-1]), args, kwargs, self_)
    if name in exportable.REPLACE and not getter:
        return record(tr, exportable.REPLACE[name], args, kwargs, name=name)
    return record(tr, func, args, kwargs, getter=getter, name=name)


def _inplace(tr, func, args, kwargs, target):
    out = record(tr, func, args, kwargs)
    if not isinstance(target, TVal):
        tr.fail("in-place update of a tensor that is not traced (a parameter or constant)",
                "do not mutate weights inside forward")
    tr.journal.append((target, target._state()))
    target._set_state((out._ex, out._region, out._node, None, target._sym, target._maybe_none))
    target._mutated = True
    return None if func is setitem else target


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
    region = tr.region()
    node = add_node(region.graph, tree_map(tr.node_of, args), tree_map(tr.node_of, kwargs))
    node.meta["line"] = line = user_frame()
    if line and line not in region.lines:
        region.lines.append(line)
    return wrap(tr, region, node, out, what)


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
    leaves = tree_flatten(out)[0]
    if any(isinstance(x, torch.Tensor) for x in leaves):
        tr.fail(f"{what} returns a nested structure of tensors dycomp cannot split")
    tr.fail(f"{what} returns a data-dependent Python value ({type(out).__name__})",
            "keep the result a tensor, or convert it with .item() in the model's code")


def _sym_shape(tr, name, t, args, kwargs):
    """Shape queries on a tensor whose shape changes across loop iterations: the
    changing dimensions are host values read at run time."""
    ex = t._ex
    dim = args[0] if args else kwargs.get("dim")

    def size(d):
        d = d % ex.dim()
        if d not in t._sym:
            return ex.shape[d]
        return tr.host_op("{0}.shape[%d]" % d, (t,), lambda a: a.shape[d])

    if name == "size" and dim is not None:
        return size(dim)
    if name in ("size", "shape"):
        return tuple(size(d) for d in range(ex.dim()))
    if name == "__len__":
        return size(0)
    if name in ("numel", "nelement"):
        return tr.host_op("{0}.size", (t,), lambda a: a.size)
    tr.fail(f"{name}() of a tensor whose shape changes across loop iterations")


def _to_host(tr, name, t):
    if name == "item":
        return tr.host_op("{0}.item()", (t,), lambda a: a.item())
    if name == "tolist":
        n = t._ex.shape[0] if t._ex.dim() > 0 else None
        return tr.host_op("{0}.tolist()", (t,), lambda a: a.tolist(), static_len=n)
    return HVal(tr.export(t), t._ex.numpy())
