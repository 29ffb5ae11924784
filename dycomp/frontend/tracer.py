"""The capture state: open region, host program blocks, scopes, joins."""

from __future__ import annotations

import copy
import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from dycomp.errors import UnsupportedError
from dycomp.frontend.dyndims import check_scalar_read
from dycomp.frontend.region import RegionBuilder
from dycomp.frontend.values import UNDEF, HVal, TVal, _state, is_sym
from dycomp.ir.program import Assign, CallRegion, HostOp, If, Lit, Op, Var
from dycomp.runtime.hostops import method_op

log = logging.getLogger(__name__)
_LIB_DIRS = tuple(p for p in {os.path.dirname(os.__file__), *sys.path}
                  if "-packages" in p or p == os.path.dirname(os.__file__))
_DYCOMP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_user_file(filename: str) -> bool:
    """Whether code in `filename` is the user's (not the stdlib, site-packages, dycomp,
    or generated)."""
    return not filename.startswith(_LIB_DIRS + (_DYCOMP_DIR, "<"))


def user_frame():
    """file:line of the innermost frame in user code."""
    f = sys._getframe(1)
    while f is not None:
        if is_user_file(f.f_code.co_filename):
            return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"
        f = f.f_back
    return ""


@dataclass
class Path:
    """A live path at a join: where its code ended, and its values."""

    stack: list
    value: object


@dataclass
class FuncScope:
    flag: Var  # set on the paths that returned, to skip the code after them
    exits: list = field(default_factory=list)


@dataclass
class LoopScope:
    host: bool
    get: object
    breaks: list = field(default_factory=list)
    conts: list = field(default_factory=list)
    header: object = None  # host loops: the loop-carried values (with Vars at the leaves)
    seen: list = field(default_factory=list)  # host loops: values flowing to the back-edge
    rets: list = field(default_factory=list)  # host loops: paths that return from inside
    brk: Var | None = None  # static loops: flag set on paths that broke out
    cont: Var | None = None  # static loops: flag set on paths that continued


class Tracer:
    def __init__(self, root: torch.nn.Module | None):
        self.root = root
        self.modules: dict[int, str] = {}
        if root is not None:
            for name, m in root.named_modules(remove_duplicate=False):
                self.modules.setdefault(id(m), name)
            for name, p in list(root.named_parameters()) + list(root.named_buffers()):
                self.modules.setdefault(id(p), name)
        self.regions: dict[str, RegionBuilder] = {}
        self.open: RegionBuilder | None = None
        self.body: list = []
        self.blocks: list[list] = [self.body]
        self.scopes: list = []
        self.counter = 0
        self.maybe_undef: set[Var] = set()
        self.predeclare: list[Var] = []  # loop-carried variables first assigned in the loop
        self.call_depth: dict = {}
        self.exit_log: list[Var] = []  # flags of the exits recorded so far, in order
        self.resolved: set[Var] = set()  # exit flags whose paths have been joined again
        self.journal: list = []  # (tensor, state before an in-place op), to undo per arm
        self.handling: list = []  # exceptions whose `except:` handler is being traced
        self.dynamic_inputs = False  # inputs have dims that vary between calls (dyndims)
        from dycomp.frontend.user_state import UserState

        self.user_state = UserState()  # the user's objects as they were, restored after

    # -- activation ---------------------------------------------------------------
    def __enter__(self):
        self._prev = getattr(_state, "tracer", None)
        _state.tracer = self
        return self

    def __exit__(self, *exc):
        _state.tracer = self._prev

    def torch_function(self, func, args, kwargs):
        """A tensor operation on traced values (from `TVal.__torch_function__`)."""
        from dycomp.frontend.torchfn import torch_function

        return torch_function(self, func, args, kwargs)

    def fail(self, construct, hint=""):
        raise UnsupportedError(construct, user_frame(), hint)

    # -- names and blocks ---------------------------------------------------------
    def var(self, prefix="v") -> Var:
        self.counter += 1
        return Var(f"{prefix}{self.counter}")

    def emit(self, stmt):
        if stmt.line is None:
            stmt.line = user_frame()
        self.blocks[-1].append(stmt)
        return stmt

    def region(self) -> RegionBuilder:
        if self.open is None:
            name = f"r{len(self.regions)}"
            self.open = self.regions[name] = RegionBuilder(name, self.modules)
        return self.open

    def close(self):
        r, self.open = self.open, None
        if r is not None:
            r.stmt = self.emit(CallRegion(r.name, list(r.inputs), list(r.out_vars)))
            r.stmt.line = r.lines[0] if r.lines else ""

    def snapshot(self, value) -> Path:
        self.close()
        return Path(list(self.blocks), freeze(value))

    def undo(self, mark: int) -> None:
        """Undo in-place updates made since `mark` (before tracing the other arm)."""
        while len(self.journal) > mark:
            t, state = self.journal.pop()
            t._set_state(state)

    # -- values across the region boundary -------------------------------------------
    def export(self, t: TVal) -> Var:
        """The host variable holding a traced tensor (adding a region output if needed)."""
        if t._var is not None:
            return t._var
        r = t._region
        if r is self.open:
            self.close()
        var = r.node_var.get(t._node)
        if var is None:
            var = self.var()
            r.add_output(t._node, var)
        t._var = var
        return var

    def node_of(self, v):
        """FX node for a value used by a tensor op of the open region."""
        if isinstance(v, TVal):
            if v._region is self.open and v._region is not None and v._node is not None:
                return v._node
            var = self.export(v)
            return self.region().placeholder(var, v._ex, v._sym)
        if isinstance(v, HVal):
            from dycomp.frontend.symdims import list_sym

            if getattr(v, "_mixed", None):
                self.fail(f"a value that is a number on some paths and a tensor on others "
                          f"(joined at {v._mixed}) used in a tensor op",
                          "make every path produce a tensor (torch.zeros_like(h), not 0)")

            return self.region().placeholder(v._var, _as_tensor(v._ex), list_sym(v))
        if isinstance(v, torch.Tensor):
            return self.region().get_attr(v)
        return v

    def host_expr(self, v):
        """Expression computing `v` on the host."""
        if isinstance(v, TVal):
            return self.export(v)
        if isinstance(v, HVal):
            return v._var
        if isinstance(v, Lit):
            return v
        if v is None or isinstance(v, (bool, int, float, str, range, complex)):
            return Lit(v)
        if isinstance(v, (np.generic,)):
            return Lit(v.item())
        if isinstance(v, torch.Tensor):
            return self.export(self.const_tensor(v))
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            return tuple(self.host_expr(x) for x in v)
        if isinstance(v, list):
            return [self.host_expr(x) for x in v]
        if isinstance(v, dict):
            return {k: self.host_expr(x) for k, x in v.items()}
        if isinstance(v, (set, frozenset)):
            return Op("set", ([self.host_expr(x) for x in v],))
        if isinstance(v, slice):  # `del memory.hidden[:]` on a host list
            return Op("slice", tuple(self.host_expr(x) for x in (v.start, v.stop, v.step)))
        if v is UNDEF:
            self.fail("use of a variable that is not defined on every path")
        from dycomp.frontend.values import SymChoice

        what = ("a module or element selected by a data-dependent index"
                if isinstance(v, SymChoice) else f"a {type(v).__name__} value")
        self.fail(f"{what} cannot be passed to the host program",
                  "keep host-side values to tensors, numbers, strings and lists of them")

    def const_tensor(self, t: torch.Tensor) -> TVal:
        r = self.region()
        return TVal(t, r, r.get_attr(t))

    def host_value(self, var: Var, example, static_len=None):
        """Wrap a host variable: tensors and arrays become TVal, the rest HVal."""
        if isinstance(example, np.ndarray):
            example = torch.from_numpy(np.array(example))
        if isinstance(example, torch.Tensor):
            return TVal(example, var=var)
        return HVal(var, example, static_len)

    def host_op(self, op, args, example_fn, pure=True, static_len=None):
        """Emit `v = op(args)` on the host (`op` names a host operator,
        `runtime/hostops.py`); the example result types the new value."""
        check_scalar_read(self, op, args)
        exprs = tuple(self.host_expr(a) for a in args)
        expr = Op(op, exprs)
        try:
            ex = example_fn(*(to_example(a) for a in args))
        except Exception as e:  # the user's own operation failed on example values
            self.fail(f"host operation `{expr.fmt.format(*map(str, exprs))}` failed: {e}")
        if ex is None and not pure:
            self.emit(HostOp(None, expr, pure=False))
            return None
        out = self.var()
        self.emit(HostOp(out, expr, pure=pure))
        return self.host_value(out, ex, static_len)

    def host_binop(self, op, pyop, args):
        if any(isinstance(a, TVal) for a in args):
            return NotImplemented
        return self.host_op(op, args, pyop)

    def host_method(self, obj, name, args, kwargs):
        if kwargs:
            self.fail(f"keyword arguments to host method .{name}()")
        op = method_op(name)
        if op is None:
            self.fail(f"host method .{name}() of a data-dependent value",
                      "the host program calls the methods listed in runtime/hostops.py")
        from dycomp.frontend.convert import MUTATORS

        return self.host_op(op, (obj,) + tuple(args),
                            lambda o, *a: getattr(o, name)(*a), pure=name not in MUTATORS)

    def to_bool(self, cond) -> Var:
        """Host variable holding the truth value of a symbolic condition."""
        if isinstance(cond, HVal) and isinstance(cond._ex, (bool, np.bool_)):
            return cond._var
        v = self.host_op("bool", (cond,), lambda c: bool(c))
        return v._var

    def record_exit(self, exits: list, value, flag: Var) -> None:
        """A path leaves a block early (return, static break/continue): it sets `flag`
        so that code after the construct it leaves is skipped on it."""
        path = self.snapshot(value)
        path.stack[-1].append(Assign([flag], [Lit(True)], line=""))
        exits.append(path)
        self.exit_log.append(flag)

    def flag(self, prefix) -> Var:
        var = self.var(prefix)
        self.emit(Assign([var], [Lit(False)], line=""))
        return var

    # -- joins ----------------------------------------------------------------------
    def merge(self, paths: list[Path], since: int = 0, own=()):
        """Join live paths: phi assignments at the end of each, continue after their split.

        Paths that left early through the joined code (exits logged after `since`, other
        than the joined ones' own `own` flags) would fall through to the code after the
        join: that code is guarded by their flags.
        """
        self.resolved.update(own)  # those paths are live again after this join
        if len(paths) == 1:
            self.blocks = list(paths[0].stack)
            return paths[0].value
        prefix = []
        for blocks in zip(*(p.stack for p in paths)):
            if any(b is not blocks[0] for b in blocks):
                break
            prefix.append(blocks[0])
        value = self.join([p.value for p in paths], [p.stack[-1] for p in paths])
        self.blocks = prefix
        foreign = list(dict.fromkeys(f for f in self.exit_log[since:]
                                     if f not in self.resolved))
        if foreign:
            go = self.var()
            self.emit(HostOp(go, Op("none_of", tuple(foreign)), line=""))
            guard = self.emit(If(go, line="", source="skip on paths that already left"))
            self.blocks = prefix + [guard.then]
        return value

    def join(self, vals: list, blocks: list, force: bool = False):
        """One value for values arriving from several blocks; `force` makes a variable
        even if they agree (values crossing a loop exit must be copied before it)."""
        defined = [v for v in vals if v is not UNDEF]
        if not defined:
            return UNDEF
        first = defined[0]
        if all(_same_static(first, v) for v in defined) or (
                not force and all(_same_value(v, first) for v in defined)):
            return first
        kinds = {_kind(v) for v in defined}
        if len(kinds) == 1 and kinds <= {"tuple", "list"} and len({len(v) for v in defined}) == 1:
            parts = [self.join([v[i] if v is not UNDEF else UNDEF for v in vals], blocks, force)
                     for i in range(len(first))]
            return type(first)(parts) if kinds == {"list"} else tuple(parts)
        if kinds == {"dict"} and len({tuple(v) for v in defined}) == 1:
            return {k: self.join([v[k] if v is not UNDEF else UNDEF for v in vals], blocks,
                                 force) for k in first}
        if kinds <= {"tensor", "none"}:
            return self._phi(vals, blocks, "tensor")
        if kinds <= {"host", "none", "tensor", "tuple", "list", "dict", "set"}:
            return self._phi(vals, blocks, "host")
        return Conflict("values of different kinds meet after a data-dependent branch: "
                        + ", ".join(sorted(type(v).__name__ for v in defined)), user_frame())

    def _phi(self, vals, blocks, kind):
        var = self.var()
        self.maybe_undef.add(var)  # unassigned on paths that left early (flag-guarded)
        for v, block in zip(vals, blocks):
            if v is UNDEF:
                self.maybe_undef.add(var)
                continue
            saved, self.blocks = self.blocks, self.blocks + [block]
            expr = self.host_expr(v)
            self.close()
            self.blocks = saved
            block.append(Assign([var], [expr], line=""))
        defined = [v for v in vals if v is not UNDEF]
        tensors = [v for v in defined if isinstance(v, torch.Tensor)]
        if kind == "tensor" and tensors:
            ex = tensors[0]._ex if isinstance(tensors[0], TVal) else tensors[0]
            sym = _sym_dims([t._ex.shape if isinstance(t, TVal) else t.shape for t in tensors])
            sym |= {d for t in tensors if isinstance(t, TVal) for d in t._sym}
            return TVal(ex, var=var, sym=sym, maybe_none=len(tensors) < len(defined))
        out = HVal(var, to_example(defined[0]))
        if tensors and any(_kind(v) == "host" for v in defined):
            out._mixed = user_frame()  # a number or a tensor: no region can type it
        return out

    # -- scopes ------------------------------------------------------------------------
    def record_return(self, value) -> None:
        """A `return` on the current path: a function exit, or (inside a host loop) a
        flagged exit of the loop that returns right after it."""
        for s in reversed(self.scopes):
            if isinstance(s, FuncScope):
                self.record_exit(s.exits, value, s.flag)
                return
            if isinstance(s, LoopScope) and s.host:
                s.rets.append(self.snapshot(value))
                return
        raise AssertionError("no function scope")

    def loop_scope(self) -> LoopScope:
        for s in reversed(self.scopes):
            if isinstance(s, LoopScope):
                return s
        raise AssertionError("break outside a loop")


class Conflict:
    """A variable whose value differs in kind across joined paths (e.g. the loop variable
    `blk` of an unrolled loop left by a data-dependent break). Fine while unused."""

    def __init__(self, what, where):
        self.what, self.where = what, where

    def _fail(self, *a, **k):
        raise UnsupportedError(self.what, self.where,
                               "make both branches produce the same kind of value")

    def __copy__(self):  # copying the program that holds it is not a use
        return self

    def __deepcopy__(self, memo):
        return self

    __getattr__ = __call__ = __bool__ = __iter__ = __getitem__ = _fail
    __add__ = __radd__ = __mul__ = __rmul__ = __sub__ = __lt__ = __gt__ = _fail


def own_containers(v):
    """`v` with every Python list, dict and set in it copied (their types kept: a
    `defaultdict` stays one): what an arm of a branch is traced on, so that its appends,
    `+=`, item assignments stay its own."""
    if type(v) is tuple:
        return tuple(own_containers(x) for x in v)
    if isinstance(v, (list, dict, set)):
        v = copy.copy(v)
        if isinstance(v, list):
            v[:] = [own_containers(x) for x in v]
        elif isinstance(v, dict):
            v.update((k, own_containers(x)) for k, x in v.items())
    return v


def freeze(v):
    """Copies of tensors that in-place ops mutated, so a path keeps its own values."""
    if isinstance(v, TVal):
        return v._frozen()
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return tuple(freeze(x) for x in v)
    if isinstance(v, list):
        return [freeze(x) for x in v]
    if isinstance(v, dict):
        return {k: freeze(x) for k, x in v.items()}
    if isinstance(v, set):
        return set(v)
    return v


def _as_tensor(ex):
    if isinstance(ex, torch.Tensor):
        return ex
    if isinstance(ex, (list, tuple)) and len(ex) == 0:
        return torch.zeros(0, dtype=torch.int64)  # an empty index list (`seqs[[]]`)
    return torch.tensor(np.asarray(ex).item() if isinstance(ex, np.generic) else ex)


def to_example(v):
    """The run-time host representation of a value, computed on example data."""
    if isinstance(v, TVal):
        return v._ex.numpy()
    if isinstance(v, HVal):
        return v._ex
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return tuple(to_example(x) for x in v)
    if isinstance(v, list):
        return [to_example(x) for x in v]
    if isinstance(v, dict):
        return {k: to_example(x) for k, x in v.items()}
    return v


def _kind(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, torch.Tensor):
        return "tensor"
    if isinstance(v, HVal) or isinstance(v, (bool, int, float, str, np.generic, range)):
        return "host"
    if isinstance(v, tuple):
        return "tuple"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "dict"
    if isinstance(v, set):
        return "set"
    return "other:" + type(v).__name__


def _same_value(a, b) -> bool:
    if isinstance(a, TVal) and isinstance(b, TVal):
        if a._node is not None or b._node is not None:
            return a._region is b._region and a._node is b._node
        return a._var == b._var and a._maybe_none == b._maybe_none and a._sym == b._sym
    return a is b


def _same_static(a, b) -> bool:
    if is_sym(a) or is_sym(b) or type(a) is not type(b):
        return False
    if isinstance(a, (bool, int, float, str, type(None))):
        return a == b
    return False


def _sym_dims(shapes) -> set:
    if len({len(s) for s in shapes}) != 1:
        return set(range(max(len(s) for s in shapes)))
    return {i for i in range(len(shapes[0])) if len({s[i] for s in shapes}) > 1}
