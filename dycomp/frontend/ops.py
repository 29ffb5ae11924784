"""The operators that converted code calls (`_dyc.if_`, `_dyc.call`, ...).

Concrete (static) conditions run as plain Python. A condition on a traced
tensor or host value becomes a host `If` whose arms are traced once each; a
loop whose condition becomes data-dependent becomes a host `Loop` whose body
is traced once.
"""

from __future__ import annotations

import builtins
import math
import types

import numpy as np
import torch
from torch import nn

from dycomp.frontend import convert as _convert
from dycomp.frontend import peel as _peel
from dycomp.frontend import randomness, torchfn
from dycomp.frontend import unroll as _unroll
from dycomp.frontend.exceptions import PathEnded, assert_, raise_, run_path, try_
from dycomp.frontend.fstrings import fstring, fstring_builtin  # noqa: F401
from dycomp.frontend.loopstate import LoopState
from dycomp.frontend.symdims import host_int
from dycomp.frontend.tracer import (
    FuncScope,
    LoopScope,
    Path,
    freeze,
    is_user_file,
    own_containers,
    to_example,
)
from dycomp.frontend.values import (
    BREAK,
    CONTINUE,
    EXITED,
    UNDEF,
    HMethod,
    HVal,
    Ret,
    SymChoice,
    TVal,
    contains_sym,
    is_sym,
    tracer,
)
from dycomp.frontend.wrappers import unwrap_grad_mode
from dycomp.ir.program import SWITCH_CASE, Assign, Break, Continue, If, Lit, Loop
from dycomp.runtime.hostcomp import CompError, comprehension_source
from dycomp.runtime.hostops import call_name, method_op

__all__ = ["BREAK", "CONTINUE", "Ret", "UNDEF", "assert_", "call", "for_", "getitem", "if_",
           "raise_", "try_", "while_"]

_HOST_BUILTINS = {max, min, sorted, any, all, set, frozenset, round, divmod, pow, sum, list,
                  tuple, dict, abs, reversed, str, repr, enumerate, zip}


def converted(fn):
    fn._dyc_converted = True
    return fn


# -- attribute helpers --------------------------------------------------------------
def attr(obj, name):
    return getattr(obj, name, UNDEF)


def setattr_(obj, name, value):
    if value is not UNDEF:
        setattr(obj, name, value)


# -- boolean operators ----------------------------------------------------------------
def not_(v):
    if not is_sym(v):
        return not v
    t = tracer()
    var = t.to_bool(v)
    return t.host_op("not", (HVal(var, bool(to_example(v))),), lambda a: not a)


def and_(*fns):
    v = fns[0]()
    if len(fns) == 1:
        return v
    if not is_sym(v):
        return v if not v else and_(*fns[1:])
    return sym_if(v, lambda: and_(*fns[1:]), lambda: v)


def or_(*fns):
    v = fns[0]()
    if len(fns) == 1:
        return v
    if not is_sym(v):
        return v if v else or_(*fns[1:])
    return sym_if(v, lambda: v, lambda: or_(*fns[1:]))


def ifexp(cond, then_fn, else_fn, loc=""):
    if not is_sym(cond):
        return then_fn() if cond else else_fn()
    return sym_if(cond, then_fn, else_fn, loc)


def sym_if(cond, then_fn, else_fn, loc="", src=""):
    """A data-dependent conditional expression: returns the joined value."""
    box = [UNDEF]

    def arm(fn):
        def run():
            box[0] = fn()
        return run

    def set_(v):
        box[0] = v[0]

    if_(cond, arm(then_fn), arm(else_fn), lambda: (box[0],), set_, loc, src)
    return box[0]


def _host_test(fmt, a, b, pyop):
    if not (is_sym(a) or is_sym(b)):
        return pyop(a, b)
    t = tracer()
    if isinstance(a, TVal) and a._maybe_none and b is None:
        return t.host_op(fmt, (HVal(t.export(a), a._ex.numpy()), b), lambda x, y: pyop(x, y))
    if isinstance(a, (TVal, SymChoice)) or isinstance(b, (TVal, SymChoice)):
        return pyop(a, b)  # identity of a traced tensor is static
    return t.host_op(fmt, (a, b), pyop)


def is_(a, b):
    return _host_test("is", a, b, lambda x, y: x is y)


def is_not(a, b):
    return _host_test("is_not", a, b, lambda x, y: x is not y)


def in_(a, b):
    if isinstance(b, TVal) or (not is_sym(a) and not contains_sym(b)):
        return a in b
    return tracer().host_op("in", (a, b), lambda x, y: x in y)


def not_in(a, b):
    if isinstance(b, TVal) or (not is_sym(a) and not contains_sym(b)):
        return a not in b
    return tracer().host_op("not_in", (a, b), lambda x, y: x not in y)


# -- indexing ---------------------------------------------------------------------------------
def getitem(obj, index):
    if isinstance(index, HVal) and isinstance(obj, torch.Tensor) and not isinstance(obj, TVal):
        obj = tracer().const_tensor(obj)  # a weight indexed by a host int: stays in a region
    if isinstance(index, HVal) and not isinstance(obj, (TVal, HVal)):
        if isinstance(obj, (nn.ModuleList, nn.Sequential)) or (
                isinstance(obj, (list, tuple)) and not _host_representable(obj)):
            if not isinstance(obj, (nn.ModuleList, nn.Sequential)):
                _probe_unroll(index)
            return SymChoice(list(obj), index)
        if isinstance(obj, nn.ModuleDict):  # a key: its position, KeyError if none
            pos = {k: i for i, k in enumerate(obj.keys())}
            at = tracer().host_op("getitem", (pos, index), lambda a, b: a[b])
            return SymChoice(list(obj.values()), at)
        return tracer().host_op("getitem", (obj, index), lambda a, b: a[b])
    if isinstance(obj, SymChoice):
        return switch(obj.index, obj.options, lambda o: getitem(o, index))
    return obj[index]


def _host_representable(v) -> bool:
    if isinstance(v, (torch.Tensor, HVal, bool, int, float, str, type(None), np.generic)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_host_representable(x) for x in v)
    if isinstance(v, dict):
        return all(_host_representable(x) for x in v.values())
    return False


def switch(index, options, fn):
    """Run `fn(options[index])` for a data-dependent index: one arm per option. The index
    is first taken as Python takes it (`range(n)[index]`: negative from the end, IndexError
    past it), so the last arm runs for the last option only."""
    t = tracer()  # kept even if unused (pure=False): it raises IndexError out of range
    index = t.host_op("range_index", (len(options), index), lambda a, b: range(a)[b],
                      pure=False)

    def arm(k):
        if k == len(options) - 1:
            return fn(options[k])
        t = tracer()
        cond = t.host_op("eq", (index, k), lambda a, b: a == b)
        return sym_if(cond, lambda: fn(options[k]), lambda: arm(k + 1), "",
                      f"{SWITCH_CASE}{k}")
    return arm(0)


# -- comprehensions ---------------------------------------------------------------------------
def comp(fn, src, env_fn, loc=""):
    """Comprehensions run in Python; if they branch on data they run on the host instead."""
    from dycomp.errors import UnsupportedError

    try:
        return fn()
    except UnsupportedError:
        env = env_fn()
        if not any(contains_sym(v) or is_sym(v) for v in env.values()):
            raise
    t = tracer()
    names = list(env)
    try:
        comprehension_source(names, src)
    except CompError as e:
        t.fail(f"a comprehension over data-dependent values that the host program cannot "
               f"run: {e}", "use numbers, containers, builtins, math. and np. functions in it")
    code = eval(f"lambda {', '.join(names)}: {src}", {"np": np, "math": math})
    return t.host_op("comprehension", (Lit(tuple(names)), Lit(src)) + tuple(
        env[n] for n in names), lambda _names, _src, *values: code(*values))


# -- calls -----------------------------------------------------------------------------------------
def _user_code(fn) -> bool:
    """Python functions from the user's files (not the stdlib, site-packages or dycomp)."""
    if not isinstance(fn, types.FunctionType):
        return False
    return is_user_file(fn.__code__.co_filename)


def _is_leaf(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.") and not isinstance(
        m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def call(f, *args, **kwargs):
    """Every call in converted code goes through here."""
    f = unwrap_grad_mode(f)
    if isinstance(f, SymChoice):
        return f(*args, **kwargs)
    if isinstance(f, HMethod):
        return f(*args, **kwargs)
    if isinstance(f, nn.Module):
        return _call_module(f, args, kwargs)
    if getattr(f, "_dyc_converted", False):
        return _run_converted(f, args, kwargs)
    if isinstance(f, types.MethodType) and _user_code(f.__func__):
        return _run_converted(_convert.convert(f.__func__), (f.__self__,) + args, kwargs)
    if isinstance(f, types.FunctionType) and _user_code(f):
        return _run_converted(_convert.convert(f), args, kwargs)
    if isinstance(f, type) and issubclass(f, nn.Module):
        return f(*args, **kwargs)
    return _call_library(f, args, kwargs)


def _call_module(m, args, kwargs):
    if isinstance(m, nn.Sequential):
        x = args[0]
        for sub in m:
            x = call(sub, x)
        return x
    t = tracer()
    drop = randomness.dropout(m)
    if drop is not None:  # in training mode: drawn per call
        x = args[0]
        return drop(x if isinstance(x, TVal) else t.const_tensor(x))
    if _is_leaf(m):
        if contains_sym(args) or contains_sym(kwargs):
            return torchfn.call_module(t, m, args, kwargs)
        return m(*args, **kwargs)
    fwd = unwrap_grad_mode(m.__dict__.get("forward") or type(m).forward)
    if isinstance(fwd, types.MethodType):
        return call(fwd, *args, **kwargs)
    if not _user_code(fwd):
        return m(*args, **kwargs)
    return _run_converted(_convert.convert(fwd), (m,) + args, kwargs)


def _call_library(f, args, kwargs):
    sym = contains_sym(args) or contains_sym(kwargs)
    if not sym:
        if randomness.is_random(f):  # a draw with static arguments: drawn per call
            return randomness.call_random(tracer(), f, args, kwargs)
        if torchfn.is_factory(f):  # traced, so that in-place updates of it are recorded
            return torchfn.record(tracer(), f, args, kwargs)
        return f(*args, **kwargs)
    t = tracer()
    if f is print:
        return None
    if f is bool:
        return HVal(t.to_bool(args[0]), bool(to_example(args[0])))
    if f is torch.autograd.Variable and len(args) == 1 and isinstance(args[0], TVal):
        return _legacy_variable(args[0])
    if f in (int, float) and isinstance(args[0], (TVal, HVal)):
        op = f.__name__ + ("_item" if isinstance(args[0], TVal) else "")
        return t.host_op(op, args, lambda a: f(a.item() if hasattr(a, "item") else a))
    if f is len:
        a = args[0]
        if isinstance(a, TVal) and a._sym and a._ex.dim() and 0 in a._sym:
            return a.size(0)  # a length that varies: read at run time
        if isinstance(a, TVal) or (isinstance(a, HVal) and a._static_len is not None):
            return len(a)
        if not isinstance(a, HVal):
            return len(a)
        return t.host_op("len", args, len)
    if f is range:
        return t.host_op("range", args, range)
    if f is isinstance:
        a = args[0]
        return isinstance(to_example(a) if isinstance(a, HVal) else a, args[1])
    if f in (getattr, hasattr, setattr, enumerate, zip, iter, next, id, type, callable):
        return f(*args, **kwargs)
    if f in torchfn.TENSOR_CTORS:
        return torchfn.tensor_ctor(t, f, args, kwargs)
    if _bound_builtin(f) and f.__name__ in ("append", "extend", "insert", "setdefault"):
        return f(*args, **kwargs)  # a static container holding symbolic values
    if f in (str, repr, format):  # of a traced tensor: not the numpy array's text
        return fstring_builtin(f, args)
    if f in _HOST_BUILTINS or _numpy_or_math(f) or _bound_builtin(f):
        if kwargs:
            t.fail(f"keyword arguments to host function {_host_name(f)}")
        return _host_call(t, f, args)
    if _torch_factory(f, args, kwargs):
        return torchfn.record(t, f, args, kwargs)  # sizes read at run time
    if _sized_method(f, args, kwargs):  # `x.new_zeros(n, 4)`, `n = x.size(0)`
        return torchfn.record(t, getattr(torch.Tensor, f.__name__), (f.__self__,) + args,
                              kwargs)
    return f(*args, **kwargs)


def _torch_factory(f, args, kwargs) -> bool:
    """A torch function taking a data-dependent int (`torch.zeros(n, 4)`, `n = len(y)`)
    and no traced tensor (those dispatch through `__torch_function__`)."""
    mod = getattr(f, "__module__", None) or ""
    if not (mod.startswith("torch") or getattr(torch, getattr(f, "__name__", ""), None) is f):
        return False
    leaves = torch.utils._pytree.tree_flatten((args, kwargs))[0]
    return any(host_int(x) for x in leaves) and not any(
        isinstance(x, (TVal, HVal)) and not host_int(x) for x in leaves)


def _sized_method(f, args, kwargs) -> bool:
    """A traced tensor's method given a data-dependent int (a size read at run time) that
    torch's argument parser would reject (`x.new_zeros(n, 4)`)."""
    return isinstance(getattr(f, "__self__", None), TVal) and isinstance(
        getattr(torch.Tensor, getattr(f, "__name__", ""), None), types.MethodDescriptorType
    ) and any(host_int(x) for x in torch.utils._pytree.tree_flatten((args, kwargs))[0])


def _legacy_variable(x: TVal) -> TVal:
    """`Variable(t)` (PyTorch < 0.4 code) is a detached alias of `t`: called on a traced
    value, torch's constructor would copy the example data into a constant."""
    return x.detach()


def _numpy_or_math(f) -> bool:
    mod = getattr(f, "__module__", None) or ""
    return mod.startswith("numpy") or f in vars(math).values()


def _bound_builtin(f) -> bool:
    return isinstance(f, types.BuiltinMethodType) and isinstance(
        getattr(f, "__self__", None), (list, dict, tuple, set, str))


def _host_name(f) -> str:
    if isinstance(f, types.BuiltinMethodType) and getattr(f, "__self__", None) is not None:
        return f.__name__
    if getattr(builtins, getattr(f, "__name__", ""), None) is f:
        return f.__name__
    if f in vars(math).values():
        return "math." + f.__name__
    name = getattr(f, "__name__", None)
    if name and getattr(np, name, None) is f:
        return "np." + name
    tracer().fail(f"host call of {f!r} with data-dependent arguments",
                  "use numpy / builtin functions on host values")


def _host_call(t, f, args):
    if _bound_builtin(f):
        op = method_op(f.__name__)
        if op is None:
            t.fail(f"host method .{f.__name__}() with data-dependent arguments",
                   "the host program calls the methods listed in runtime/hostops.py")
        return t.host_op(op, (f.__self__,) + tuple(args),
                         lambda o, *a: getattr(o, f.__name__)(*a))
    module, _, name = _host_name(f).rpartition(".")
    op = call_name(module, name, len(args))
    if op is None:
        t.fail(f"host call of {_host_name(f)} with data-dependent arguments",
               "the host program calls the functions listed in runtime/hostops.py")
    return t.host_op(op, tuple(args), f)


def _run_converted(fn, args, kwargs):
    t = tracer()
    t.user_state.save_function(fn)  # what its globals and closure reach, before it runs
    key = fn.__code__
    depth = t.call_depth.get(key, 0)
    if depth > 40:
        t.fail(f"recursion deeper than 40 calls of {fn.__qualname__} (data-dependent recursion)",
               "rewrite the recursion as a loop")
    t.call_depth[key] = depth + 1
    scope = FuncScope(t.flag("ret"))
    since = len(t.exit_log)
    t.scopes.append(scope)
    try:
        r = fn(*args, **kwargs)
    except PathEnded:  # the path raised: earlier returns still leave the function
        r = EXITED
    finally:
        t.scopes.pop()
        t.call_depth[key] = depth
    if r is None:
        r = Ret(None)
    if isinstance(r, Ret):
        scope.exits.append(t.snapshot(r.value))
    if not scope.exits and r is EXITED:
        raise PathEnded
    if not scope.exits:
        t.fail(f"{fn.__qualname__} never returns")
    return t.merge(scope.exits, since, own=(scope.flag,))


# -- branches ------------------------------------------------------------
def _classify(t, r, get, paths):
    """Route how an arm ended: live path, function exit, loop exit."""
    if r is None:
        paths.append(t.snapshot(get()))
    elif isinstance(r, Ret):
        t.record_return(r.value)
    elif r is BREAK or r is CONTINUE:
        loop = t.loop_scope()
        if loop.host:
            _host_jump(t, loop, r)
        elif r is BREAK:
            t.record_exit(loop.breaks, loop.get(), loop.brk)
        else:
            t.record_exit(loop.conts, loop.get(), loop.cont)
    elif r is not EXITED:
        raise AssertionError(f"unexpected marker {r!r}")


def _host_jump(t, loop, r):
    t.close()
    values = freeze(loop.get())
    loop.seen.append(values)
    _back_edge(t, loop, values)
    t.emit(Break() if r is BREAK else Continue())


def if_(cond, then_fn, else_fn, get, set_, loc="", src=""):
    if not is_sym(cond):
        return then_fn() if cond else else_fn()
    t = tracer()
    cvar = t.to_bool(cond)
    t.close()
    since, mark = len(t.exit_log), len(t.journal)
    init = get()
    stmt = t.emit(If(cvar, line=loc, source=src))
    base = list(t.blocks)
    paths: list[Path] = []
    for fn, block in ((then_fn, stmt.then), (else_fn, stmt.orelse)):
        set_(own_containers(init))
        t.blocks = base + [block]
        _classify(t, run_path(fn), get, paths)
        t.undo(mark)
    if not paths:
        t.blocks = base
        return EXITED
    set_(t.merge(paths, since))
    return None


# -- loops ------------------------------------------------------------
def _static_scope(t, get):
    scope = LoopScope(host=False, get=get, brk=t.flag("brk"))
    scope.since, scope.own = len(t.exit_log), [scope.brk]
    return scope


def while_(cond_fn, body_fn, get, set_, loc="", src="", can_exit=False):
    """A loop that may leave early (break/return) is a host loop with its body traced
    once; otherwise it is unrolled while its condition is static."""
    t = tracer()
    if can_exit:
        return _while_host(t, cond_fn, body_fn, get, set_, loc, src)
    scope = _static_scope(t, get)
    while True:
        c = cond_fn()
        if is_sym(c):
            break
        if not c:
            return _end_static(t, scope, get, set_, live=True)
        r = _static_iteration(t, scope, lambda: body_fn(), get, set_)
        if r is not None:
            return r if r is not BREAK else _end_static(t, scope, get, set_, live=False)
    if scope.breaks or scope.conts:
        t.fail("a loop that turns data-dependent after a data-dependent break",
               "use one data-dependent loop condition")
    return _while_host(t, cond_fn, body_fn, get, set_, loc, src)


def _while_host(t, cond_fn, body_fn, get, set_, loc, src, peel=True):
    """A data-dependent while loop; its first iteration is peeled (peel.py) when a
    carried value is a Python value before it and a tensor after it."""
    return _maybe_peeled(
        t, lambda: _host_loop(t, get, set_, loc, src, cond_fn=cond_fn,
                              body_fn=lambda _: body_fn(), peel=peel),
        lambda: _peeled_while(t, cond_fn, body_fn, get, set_, loc, src), get, set_, peel)


def _maybe_peeled(t, host, peeled, get, set_, peel: bool):
    """`host()`, or with `peel`, `peeled()` when the host loop needs its first iteration
    on its own (peel.py)."""
    return _peel.host_or_peeled(t, host, peeled, get, set_) if peel else host()


def _peeled_while(t, cond_fn, body_fn, get, set_, loc, src):
    """The first iteration traced on its own (left through a flag like an unrolled
    one), then a host loop for the others."""
    scope = _static_scope(t, get)

    def first():
        c = cond_fn()
        if not is_sym(c):
            return body_fn() if c else BREAK
        return if_(c, body_fn, lambda: BREAK, get, set_, loc, src)

    r = _static_iteration(t, scope, first, get, set_)
    if r is not None:
        return r if r is not BREAK else _end_static(t, scope, get, set_, live=False)
    _while_host(t, cond_fn, body_fn, get, set_, loc, src, peel=False)
    return _end_static(t, scope, get, set_, live=True)


def for_(iterable, body_fn, get, set_, loc="", src="", can_exit=False):
    """Unroll loops over static iterables, except `range` loops that may leave early:
    those (and loops over host values) become host loops with the body traced once."""
    t = tracer()
    if isinstance(iterable, range) and can_exit and _unroll.can_unroll(iterable):
        return _unroll.host_or_unrolled(
            t, lambda: _host_loop(t, get, set_, loc, src, iterable=iterable, body_fn=body_fn,
                                  trial=True),
            lambda: _static_for(t, iterable, body_fn, get, set_), get, set_)
    if isinstance(iterable, HVal) or (isinstance(iterable, range) and can_exit):
        return _for_host(t, iterable, body_fn, get, set_, loc, src)
    if _varying_rows(t, iterable):
        return _for_host(t, iterable, body_fn, get, set_, loc, src)
    return _static_for(t, iterable, body_fn, get, set_)


def _varying_rows(t, iterable) -> bool:
    """`for row in tensor` over a tensor whose row count depends on the data
    (`expert_hit = mask.nonzero()`): a host loop over the rows, each row a tensor held by
    the host. Unrolled, it would run the example's number of iterations on every call."""
    if not isinstance(iterable, TVal) or not iterable._ex.dim() or 0 not in iterable._sym:
        return False
    if iterable._sym - {0}:
        t.fail("iterating over a tensor whose rows change size at run time",
               "iterate over range(len(t)) and index the rows")
    return True


def _first_row(ex):
    """The example of a host loop's first item: a tensor's first row (zeros when it
    has none, so that the body is traced on a row of the right shape)."""
    if isinstance(ex, np.ndarray) and ex.ndim:
        return ex[0] if len(ex) else np.zeros(ex.shape[1:], ex.dtype)
    return next(iter(ex), 0)


def _for_host(t, iterable, body_fn, get, set_, loc, src, peel=True):
    """A host loop over a data-dependent (or long, leavable) iterable; its first
    iteration is peeled like a while loop's (peel.py)."""
    return _maybe_peeled(
        t, lambda: _host_loop(t, get, set_, loc, src, iterable=iterable, body_fn=body_fn,
                              peel=peel),
        lambda: _peeled_for(t, iterable, body_fn, get, set_, loc, src), get, set_, peel)


def _peeled_for(t, iterable, body_fn, get, set_, loc, src):
    """The first item's iteration on its own, then a host loop over the others."""
    if not isinstance(iterable, (HVal, TVal)):
        seq = iterable
    elif isinstance(to_example(iterable), (range, list, tuple, torch.Tensor)):
        seq = iterable
    else:
        seq = t.host_op("list", (iterable,), list)
    scope = _static_scope(t, get)

    def first():
        if not isinstance(seq, HVal):
            return body_fn(seq[0]) if len(seq) else BREAK
        some = t.host_op("nonempty", (seq,), lambda a: len(a) > 0)
        item = lambda: body_fn(t.host_op(  # noqa: E731
            "getitem", (seq, 0), lambda a, k: a[k] if len(a) else _first_row(a)))
        return if_(some, item, lambda: BREAK, get, set_, loc, src)

    r = _static_iteration(t, scope, first, get, set_)
    if r is not None:
        return r if r is not BREAK else _end_static(t, scope, get, set_, live=False)
    rest = seq[1:] if not isinstance(seq, (HVal, TVal)) else t.host_op(
        "tail", (seq, 1), lambda a, k: a[k:])
    _for_host(t, rest, body_fn, get, set_, loc, src, peel=False)
    return _end_static(t, scope, get, set_, live=True)


def _static_for(t, iterable, body_fn, get, set_):
    """A loop over a static iterable, unrolled: the loop variable is a Python value."""
    scope = _static_scope(t, get)
    for item in iterable:
        r = _static_iteration(t, scope, lambda item=item: body_fn(item), get, set_)
        if r is not None:
            return r if r is not BREAK else _end_static(t, scope, get, set_, live=False)
    return _end_static(t, scope, get, set_, live=True)


def _static_iteration(t, scope, run, get, set_):
    """One unrolled iteration. Returns None to go on, BREAK to stop."""
    scope.cont = t.flag("cont")
    scope.own.append(scope.cont)
    since = len(t.exit_log)
    t.scopes.append(scope)
    try:
        r = run_path(run)
    finally:
        t.scopes.pop()
    paths = scope.conts
    scope.conts = []
    if r is BREAK:
        t.record_exit(scope.breaks, get(), scope.brk)
    elif r is None or r is CONTINUE:
        paths.append(t.snapshot(get()))
    elif isinstance(r, Ret):
        t.record_return(r.value)
    if not paths:
        return BREAK  # every path of this iteration left the loop or the function
    set_(t.merge(paths, since, own=(scope.cont,)))
    return None


def _end_static(t, scope, get, set_, live):
    paths = scope.breaks + ([t.snapshot(get())] if live else [])
    if not paths:
        return EXITED
    set_(t.merge(paths, scope.since, own=scope.own))
    return None


def _host_loop(t, get, set_, loc, src, body_fn, cond_fn=None, iterable=None, trial=False,
               peel=False):
    """A loop whose trip count depends on data: its body is traced once (again when it
    turns out to change attributes of objects, which then become loop-carried). `trial`:
    a counted loop that is unrolled instead if its carried values change type."""
    state = LoopState(t, get, set_)
    get, set_ = state.get, state.set
    init = get()
    kinds = None
    for _ in range(8):
        t.close()
        block, n0 = t.blocks[-1], len(t.blocks[-1])
        set_(init)
        header = _header(t, init, kinds)
        loop = _trace_body(t, header, init, get, set_, loc, src, body_fn, cond_fn, iterable,
                           probe=trial)
        if state.discover(_leaves(loop.seen[0]) if loop.seen else ()):
            set_(init)  # the locals as before the loop; then the new slots' values
            init, kinds = get(), None
            del block[n0:]
            continue
        if trial and _changes_type(header, loop.seen):
            raise _unroll.NotUniform("loop-carried values change type")
        new = _widen(kinds or tuple(_kind(v) for v in header), loop.seen)
        if peel and kinds is None and _peel.turns_tensor(tuple(_kind(v) for v in header), new):
            raise _peel.PeelFirst
        if new == (kinds or tuple(_kind(v) for v in header)):
            break
        kinds = new
        del block[n0:]
    else:
        t.fail("loop-carried values keep changing kind across iterations",
               "give loop variables a fixed type (tensor or number) before the loop")
    set_(header)
    if loop.ret is not None:  # `return` inside the loop: leave it, then return
        flag, value = loop.ret
        block.insert(block.index(loop), Assign([flag], [Lit(False)]))
        stmt = t.emit(If(flag, line=loc, source="returned inside the loop"))
        base = list(t.blocks)
        t.blocks = base + [stmt.then]
        t.record_return(value)
        t.blocks = base + [stmt.orelse]
    return None


def _trace_body(t, header, init, get, set_, loc, src, body_fn, cond_fn, iterable,
                probe=False):
    init_vals = [(v, x) for v, x in zip(_leaves(header), _leaves(init)) if _var_of(v)]
    srcs = [t.host_expr(x) for _, x in init_vals if x is not UNDEF]
    dsts = [_var_of(v) for v, x in init_vals if x is not UNDEF]
    t.close()
    if dsts:
        t.emit(Assign(dsts, srcs, line=loc))
    loop = Loop(line=loc, source=src)
    item = None
    if iterable is not None:
        loop.iter_expr = t.host_expr(iterable)
        loop.target = t.var("it")
        ex = to_example(iterable)
        first = _first_row(ex) if not isinstance(ex, range) or len(ex) else 0
        item = t.host_value(loop.target, first)
        item._unroll_probe = probe
    t.emit(loop)
    base = list(t.blocks)
    t.blocks = base + [loop.body]
    scope = LoopScope(host=True, get=get, header=header)
    t.scopes.append(scope)
    mark = len(t.journal)
    try:
        set_(header)
        if cond_fn is not None:
            c = cond_fn()
            if is_sym(c):
                nc = t.host_op("not", (HVal(t.to_bool(c), True),), lambda a: not a)
                t.close()
                t.emit(If(nc._var, then=[Break()], line=loc, source=f"not ({src})"))
            elif not c:
                t.emit(Break())
        r = run_path(body_fn, item)
        paths: list = []
        _classify(t, r, get, paths)
        if paths:
            scope.seen.append(paths[0].value)
            t.blocks = paths[0].stack
            _back_edge(t, scope, paths[0].value)
    finally:
        t.scopes.pop()
        t.close()
        t.blocks = base
        t.undo(mark)
    loop.seen, loop.ret = scope.seen, None
    if scope.rets:
        value = t.join([p.value for p in scope.rets], [p.stack[-1] for p in scope.rets],
                       force=True)
        loop.ret = (t.var("ret"), value)
        for p in scope.rets:
            p.stack[-1] += [Assign([loop.ret[0]], [Lit(True)]), Break()]
    return loop


def _probe_unroll(index) -> None:
    """A trial host loop (`unroll.host_or_unrolled`) is unrolled when its body selects a
    non-host list element by the counter (PABEE's `head_mask[i]` of `[None] * n`)."""
    if getattr(index, "_unroll_probe", False):
        raise _unroll.NotUniform("the body selects a list element by the loop counter")


def _back_edge(t, scope, values):
    pairs = [(_var_of(h), x) for h, x in zip(_leaves(scope.header), _leaves(values))
             if _var_of(h) is not None and x is not UNDEF]
    pairs = [(d, t.host_expr(x)) for d, x in pairs]
    t.close()
    pairs = [(d, s) for d, s in pairs if s != d]
    if pairs:
        t.emit(Assign([d for d, _ in pairs], [s for _, s in pairs]))


def _changes_type(header, seen) -> bool:
    kinds = [_kind(v) for v in header]
    return any(_unroll.type_changed(k, _kind(v)) for values in seen
               for k, v in zip(kinds, values) if v is not UNDEF)


def _leaves(values):
    out = []
    for v in values:
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            out += _leaves(v)
        else:
            out.append(v)
    return out


def _var_of(v):
    return getattr(v, "_loop_var", None) if isinstance(v, (TVal, HVal)) else None


def _kind(v):
    if isinstance(v, TVal):
        return ("T", v._ex.dtype, tuple(None if i in v._sym else s
                                        for i, s in enumerate(v._ex.shape)), v._maybe_none)
    if isinstance(v, HVal) or isinstance(v, (bool, int, float, str, type(None), list, dict,
                                             np.generic, range)):
        return ("H",)
    if isinstance(v, torch.Tensor):
        return ("T", v.dtype, tuple(v.shape), False)
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return ("C",) + tuple(_kind(x) for x in v)
    if v is UNDEF:
        return ("U",)
    return ("S", id(v))


def _widen(kinds, seen):
    """Kinds of the loop-carried values that hold across all iterations."""
    out = list(kinds)
    for values in seen:
        for i, v in enumerate(values):
            out[i] = _join_kind(out[i], _kind(v))
    return tuple(out)


def _join_kind(a, b):
    if a == b or b == ("U",):
        return a
    if a == ("U",):
        return a if b[0] == "S" else b
    if a[0] == "C" and b[0] == "C" and len(a) == len(b):
        return ("C",) + tuple(_join_kind(x, y) for x, y in zip(a[1:], b[1:]))
    if a[0] == "T" and b[0] == "T":
        if len(a[2]) != len(b[2]):
            shape = (None,) * max(len(a[2]), len(b[2]))
        else:
            shape = tuple(x if x == y else None for x, y in zip(a[2], b[2]))
        return ("T", b[1] if a[1] != b[1] else a[1], shape, a[3] or b[3])
    if {a[0], b[0]} == {"T", "H"}:
        t = a if a[0] == "T" else b
        return ("T", t[1], (None,) * len(t[2]), True)
    if a[0] == "S" or b[0] == "S":
        return a  # a static object (module, function): local to the body
    return ("H",)


def _header(t, init, kinds):
    """Loop-carried values as fresh host variables (phi at the loop header)."""
    kinds = kinds or tuple(_kind(v) for v in init)
    return tuple(_header_value(t, v, k) for v, k in zip(init, kinds))


def _header_value(t, v, kind):
    if kind[0] == "C" and isinstance(v, tuple):
        return tuple(_header_value(t, x, k) for x, k in zip(v, kind[1:]))
    if kind[0] in ("S", "U"):
        return v
    var = t.var("h")
    if kind[0] == "T":
        ex = v._ex if isinstance(v, TVal) else (v if isinstance(v, torch.Tensor) else None)
        if ex is None:
            from dycomp.frontend.tracer import _as_tensor

            ex = _as_tensor(to_example(v)) if v is not UNDEF and v is not None else torch.zeros(
                [1 if s is None else s for s in kind[2]], dtype=kind[1])
        sym = {i for i, s in enumerate(kind[2]) if s is None}
        out = TVal(ex.to(kind[1]), var=var, sym=sym, maybe_none=kind[3])
    else:
        ex = to_example(v) if v is not UNDEF else None
        out = HVal(var, list(ex) if isinstance(ex, list) else ex)
    out._loop_var = var  # stays even if an in-place op rebinds the value
    if v is UNDEF:
        t.maybe_undef.add(var)
        t.predeclare.append(var)
    return out
