"""`raise`, `assert` and `try`/`except` in converted code.

A `raise` reached on every input (no data-dependent branch between it and the function
being compiled, or the `try` that catches it) is plain Python: it raises at capture, as
eager would on every input. A `raise` on a data-dependent path ends that path:

* caught by a `try` of the converted code (an `except` whose classes match the
  exception object, decided at capture): the path sets the try's flag (so the code
  after the raise is skipped on it, as after a `return`) and the handler is traced at
  the end of the path, with the values the try's function had at the raise;
* not caught: a host `Raise` statement (`ir.program.Raise`), the exception's class by
  module and name and its static arguments; the runtime rebuilds builtin classes and
  raises `dycomp.runtime.ModelError` for the model's own ones (`CompiledModel`
  re-raises the model's own class where it can import it).

`PathEnded` unwinds the tracer from the raise to the construct that traced the path
(a branch arm, a loop iteration, a `try` body), which treats the path as left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dycomp.errors import UnsupportedError
from dycomp.frontend.tracer import FuncScope, LoopScope, freeze, own_containers
from dycomp.frontend.values import EXITED, HVal, contains_sym, is_sym, tracer
from dycomp.ir.program import Assign, Lit, Raise, Var


class PathEnded(BaseException):
    """The path being traced raised (internal: never reaches user code)."""


@dataclass
class TryScope:
    flag: Var  # set on the paths that raised into this try
    get: object
    handlers: list  # (exception classes or None for a bare `except:`, handler function)
    blocks: list  # the host blocks where the try starts: a raise there is static
    final: bool  # has a `finally:` block
    raises: list = field(default_factory=list)  # (Path, values at the raise, exc, handler)


def run_path(fn, *args):
    """`fn(*args)`, or EXITED if the path it traces raised."""
    try:
        return fn(*args)
    except PathEnded:
        return EXITED


def _handler(scope: TryScope, exc):
    for classes, fn in scope.handlers:
        if classes is None or isinstance(exc, classes):
            return fn
    return None


def raise_(exc=None, loc: str = ""):
    """A `raise` statement (`exc` None: a bare `raise` in a handler)."""
    t = tracer()
    if exc is None:
        if not t.handling:
            raise RuntimeError("No active exception to reraise")
        exc = t.handling[-1]
    if isinstance(exc, type):
        exc = exc()
    if not isinstance(exc, BaseException):
        raise TypeError("exceptions must derive from BaseException")
    for scope in reversed(t.scopes):
        if isinstance(scope, LoopScope) and scope.host:
            break
        if isinstance(scope, TryScope):
            if scope.final:
                t.fail("`raise` inside a `try` with a `finally:` block",
                       "move the finally-block after the try")
            fn = _handler(scope, exc)
            if fn is not None:
                if _same_blocks(t.blocks, scope.blocks):
                    raise exc  # static: the try_ below catches it as Python would
                _record(t, scope, exc, fn)
    else:
        if len(t.blocks) == 1:
            raise exc  # reached on every input: eager raises on every input too
    if any(isinstance(s, TryScope) and _handler(s, exc) for s in t.scopes):
        t.fail("`raise` inside a data-dependent loop, caught outside it",
               "catch the exception inside the loop, or leave the loop with break")
    t.close()
    t.emit(Raise(None, module=type(exc).__module__, qualname=type(exc).__qualname__,
                 args=_static_args(t, exc), line=loc or None))
    raise PathEnded


def _same_blocks(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _record(t, scope: TryScope, exc, fn):
    path = t.snapshot(None)
    path.stack[-1].append(Assign([scope.flag], [Lit(True)], line=""))
    scope.raises.append((path, freeze(scope.get()), exc, fn))
    t.exit_log.append(scope.flag)
    raise PathEnded


def _static_args(t, exc) -> tuple:
    # a message built by an f-string of traced values (fstrings.py): its text on the
    # example, as Python formatted it before f-strings were built by the host
    args = tuple(a._ex if isinstance(a, HVal) and isinstance(a._ex, str) else a
                 for a in exc.args)
    if contains_sym(args) or any(is_sym(a) for a in args) or not all(
            isinstance(a, (str, int, float, bool, type(None))) for a in args):
        t.fail(f"{type(exc).__name__} raised with data-dependent or non-literal arguments "
               "on a data-dependent path", "raise it with a message string")
    return args


def assert_(cond, msg_fn, loc: str = ""):
    """`assert cond, msg`: a data-dependent condition raises AssertionError at run time."""
    from dycomp.frontend.ops import if_

    if not is_sym(cond):
        if not cond:
            raise AssertionError(msg_fn())
        return

    def fail():
        msg = msg_fn()
        raise_(AssertionError(msg) if msg is not None else AssertionError(), loc)

    if_(cond, lambda: None, fail, lambda: (), lambda v: None, loc, "assert")


def try_(body_fn, handlers, else_fn, final_fn, get, set_, loc=""):
    """A `try` statement: `handlers` lists (classes or None, function of the exception)."""
    t = tracer()
    since, mark = len(t.exit_log), len(t.journal)
    scope = TryScope(t.flag("exc"), get, handlers, list(t.blocks), final_fn is not None)
    t.scopes.append(scope)
    static = None
    try:
        r = body_fn()
    except PathEnded:
        r = EXITED
    except UnsupportedError:
        raise
    except Exception as e:
        fn = _handler(scope, e)
        if fn is None:
            raise
        if not _same_blocks(t.blocks, scope.blocks):
            t.fail(f"{type(e).__name__} raised by library code on a data-dependent path "
                   "inside `try`", "raise it from the model's own code")
        static = (e, fn)
    finally:
        t.scopes.remove(scope)
    if static is not None:
        r = _handle(t, static[1], static[0])
    elif r is None and else_fn is not None:
        r = run_path(else_fn)
    paths: list = []
    from dycomp.frontend.ops import _classify

    _classify(t, r, get, paths)
    for path, values, exc, fn in scope.raises:
        t.blocks = list(path.stack)
        set_(own_containers(values))
        _classify(t, _handle(t, fn, exc), get, paths)
    if scope.raises:
        t.undo(mark)
    if final_fn is not None and (t.exit_log[since:] or r is not None):
        t.fail("`return`, `break` or `continue` inside a `try` with a `finally:` block",
               "move the finally-block after the try")
    if not paths:
        return EXITED
    set_(t.merge(paths, since, own=(scope.flag,)))
    return final_fn() if final_fn is not None else None


def _handle(t, fn, exc):
    t.handling.append(exc)
    try:
        return run_path(fn, exc)
    finally:
        t.handling.pop()


__all__ = ["FuncScope", "PathEnded", "TryScope", "assert_", "raise_", "run_path", "try_"]
