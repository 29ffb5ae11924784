"""Values seen by user code during capture.

* `TVal`: a traced tensor. A real `torch.Tensor` subclass (so `isinstance`
  checks and every tensor method work) holding an example value for shapes and
  dtypes, and where the value lives: a node of the open region, or a host
  variable.
* `HVal`: a symbolic host value (Python scalar, list, ...) computed by the host
  program at run time, e.g. the result of `.item()`.
* Markers that converted code returns to leave a block (`Ret`, `BREAK`, ...).
"""

from __future__ import annotations

import threading

import torch

from dycomp.errors import UnsupportedError

_state = threading.local()


def tracer():
    t = getattr(_state, "tracer", None)
    if t is None:
        raise UnsupportedError("a traced value escaped capture",
                               hint="do not keep tensors from dycomp.compile's capture")
    return t


class _Undef:
    def __repr__(self):
        return "UNDEF"

    def __bool__(self):
        raise UnsupportedError("use of a variable that is not defined on every path")


UNDEF = _Undef()


class _Marker:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


BREAK, CONTINUE, EXITED = _Marker("BREAK"), _Marker("CONTINUE"), _Marker("EXITED")


class Ret:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class TVal(torch.Tensor):
    """A tensor traced into a region (`node`) and/or held by the host (`var`)."""

    @staticmethod
    def __new__(cls, example, region=None, node=None, var=None, sym=(), maybe_none=False):
        t = torch.Tensor._make_subclass(cls, example.detach(), False)
        t._ex, t._region, t._node, t._var = example.detach(), region, node, var
        t._sym, t._maybe_none = frozenset(sym), maybe_none
        t._mutated = False
        return t

    def _state(self):
        return (self._ex, self._region, self._node, self._var, self._sym, self._maybe_none)

    def _set_state(self, st):
        self._ex, self._region, self._node, self._var, self._sym, self._maybe_none = st

    def _frozen(self):
        """A copy of this value as it is now (in-place ops later mutate `self`)."""
        ex, region, node, var, sym, maybe_none = self._state()
        t = TVal(ex, region, node, var, sym, maybe_none)
        if hasattr(self, "_loop_var"):
            t._loop_var = self._loop_var
        return t

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return tracer().torch_function(func, args, kwargs or {})

    def __repr__(self, *a, **k):
        where = self._var.name if self._var is not None else f"{self._region.name}:{self._node}"
        return f"TVal({where}, {tuple(self._ex.shape)}, {self._ex.dtype})"

    def __hash__(self):
        return id(self)

    def __deepcopy__(self, memo):
        return self


def _hop(fmt, pyop):
    def method(self, *others):
        return tracer().host_binop(fmt, pyop, (self,) + others)

    return method


def _hrop(fmt, pyop):
    def method(self, other):  # other <op> self
        return tracer().host_binop(fmt, pyop, (other, self))

    return method


class HVal:
    """A value computed by the host program at run time (scalar, list, range, ...)."""

    def __init__(self, var, example, static_len=None):
        self._var, self._ex, self._static_len = var, example, static_len

    def __repr__(self):
        return f"HVal({self._var.name}, example={self._ex!r})"

    def __hash__(self):
        return id(self)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return tracer().torch_function(func, args, kwargs or {})

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return HMethod(self, name)

    def __bool__(self):
        tracer().fail("bool() of a host value in code dycomp does not convert",
                      "move the condition into the model's own code")

    def __index__(self):
        tracer().fail("a data-dependent integer used where Python needs a concrete int",
                      "index with it inside a tensor op, or select among modules with it")

    __int__ = __float__ = __index__

    def __len__(self):
        if self._static_len is None:
            tracer().fail("len() of a host list whose length depends on the data")
        return self._static_len

    def __iter__(self):
        n = len(self)
        return iter([self[i] for i in range(n)])

    def __format__(self, spec):
        tracer().fail("formatting a data-dependent value into a string")

    __getitem__ = _hop("getitem", lambda a, b: a[b])

    def __setitem__(self, key, value):  # a host dict or list changed in place
        tracer().host_op("setitem", (self, key, value),
                         lambda o, k, v: o.__setitem__(k, v), pure=False)

    def __delitem__(self, key):  # `del memory.hidden[:]` on a host list
        tracer().host_op("delitem", (self, key),
                         lambda o, k: o.__delitem__(k), pure=False)

    __add__, __radd__ = _hop("add", lambda a, b: a + b), _hrop("add", lambda a,
                                                                          b: a + b)
    __sub__, __rsub__ = _hop("sub", lambda a, b: a - b), _hrop("sub", lambda a,
                                                                          b: a - b)
    __mul__, __rmul__ = _hop("mul", lambda a, b: a * b), _hrop("mul", lambda a,
                                                                          b: a * b)
    __truediv__ = _hop("truediv", lambda a, b: a / b)
    __rtruediv__ = _hrop("truediv", lambda a, b: a / b)
    __floordiv__ = _hop("floordiv", lambda a, b: a // b)
    __rfloordiv__ = _hrop("floordiv", lambda a, b: a // b)
    __mod__ = _hop("mod", lambda a, b: a % b)
    __rmod__ = _hrop("mod", lambda a, b: a % b)
    __pow__ = _hop("pow", lambda a, b: a**b)
    __lt__ = _hop("lt", lambda a, b: a < b)
    __le__ = _hop("le", lambda a, b: a <= b)
    __gt__ = _hop("gt", lambda a, b: a > b)
    __ge__ = _hop("ge", lambda a, b: a >= b)
    __eq__ = _hop("eq", lambda a, b: a == b)
    __ne__ = _hop("ne", lambda a, b: a != b)
    __and__ = _hop("bitand", lambda a, b: a & b)
    __or__ = _hop("bitor", lambda a, b: a | b)
    __xor__ = _hop("bitxor", lambda a, b: a ^ b)
    __neg__ = _hop("neg", lambda a: -a)
    __abs__ = _hop("abs", abs)


class HMethod:
    """`hval.method` before it is called."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __call__(self, *args, **kwargs):
        return tracer().host_method(self.obj, self.name, args, kwargs)


class SymChoice:
    """An element of a static container selected by a data-dependent index."""

    def __init__(self, options, index):
        self.options, self.index = list(options), index

    def __call__(self, *args, **kwargs):
        from dycomp.frontend import ops

        return ops.switch(self.index, self.options, lambda o: ops.call(o, *args, **kwargs))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        from dycomp.frontend import ops

        return ops.switch(self.index, self.options, lambda o: getattr(o, name))


def is_sym(v) -> bool:
    return isinstance(v, (TVal, HVal, SymChoice))


def contains_sym(v, depth=0) -> bool:
    if is_sym(v):
        return True
    if depth < 4 and isinstance(v, (list, tuple, set, frozenset)):
        return any(contains_sym(x, depth + 1) for x in v)
    if depth < 4 and isinstance(v, dict):
        return any(contains_sym(x, depth + 1) for x in v.values())
    return False
