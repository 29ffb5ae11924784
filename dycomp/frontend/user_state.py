"""The user's objects that capture may change, saved before and restored after it.

Capture runs the model's code on traced values: code that appends to a list, assigns a
module attribute or rebinds an attribute chain at a join (`cfg.trace = ...`) leaves
traced values in the user's objects. `UserState` saves what such code can reach: the
model's modules (their attributes, parameters, buffers, submodules and weight data), the
containers and plain objects reachable from them, from the call's arguments and from the
globals and closures of every user function capture runs, and the user's own modules.
`restore()` puts every saved object back as it was, on every exit of capture, failures
included (`dycomp.frontend.capture`).
"""

from __future__ import annotations

import logging
import sys
import types

from torch import nn

from dycomp.frontend.tracer import is_user_file

log = logging.getLogger(__name__)
MAX_DEPTH = 4  # containers and plain objects, nested (modules nest without limit)
MAX_OBJECTS = 20_000


class UserState:
    def __init__(self):
        self._seen: set[int] = set()
        self._undo: list = []  # (object, saved form), restored in reverse order
        self._codes: set = set()
        self._full = False  # MAX_OBJECTS reached (warned)

    def save(self, obj, depth: int = MAX_DEPTH) -> None:
        """Save `obj` and what it holds (once per object; later saves are no-ops)."""
        todo = [(obj, depth)]
        while todo:
            if len(self._seen) >= MAX_OBJECTS:
                if not self._full:
                    self._full = True
                    log.warning("capture saved %d user objects and no more: objects reached "
                                "after them are not restored", MAX_OBJECTS)
                return
            obj, depth = todo.pop()
            if depth < 0 or id(obj) in self._seen:
                continue
            children = self._save_one(obj)
            if children is None:
                continue
            for child in children:
                deeper = isinstance(obj, nn.Module) and isinstance(child, nn.Module)
                todo.append((child, depth if deeper else depth - 1))

    def save_function(self, fn) -> None:
        """The globals (once per code object) and closure of a function capture runs."""
        code = getattr(fn, "__code__", None)
        if code is None:
            return
        if code not in self._codes:
            self._codes.add(code)
            for name, value in list(fn.__globals__.items()):
                if not name.startswith("__"):
                    self.save(value)
        for cell in fn.__closure__ or ():
            try:
                self.save(cell.cell_contents)
            except ValueError:  # an empty cell
                pass

    def restore(self) -> None:
        for obj, saved in reversed(self._undo):
            try:
                _restore_one(obj, saved)
            except Exception as e:  # an immutable or odd container: leave it, say so
                log.warning("capture could not restore a %s: %s", type(obj).__name__, e)

    def _save_one(self, obj):
        """Record `obj`'s current state; its children to save next, or None."""
        kind = _kind(obj)
        if kind is None:
            return None
        self._seen.add(id(obj))
        if kind == "tuple":
            saved, children = None, list(obj)
        elif kind == "list":
            saved = children = list(obj)
        elif kind == "dict":  # the stored items: a subclass's __getitem__ may compute
            saved = dict(dict.items(obj))  # (transformers' ACT2FN builds a module)
            children = list(saved.values())
        elif kind == "set":
            saved, children = set(obj), []
        elif kind == "module":
            saved = _module_state(obj)
            children = list(saved[0].values()) + list(saved[3].values())
        else:  # a plain object or a user's Python module: its attributes
            saved = dict(vars(obj))
            children = [v for k, v in saved.items() if not k.startswith("__")]
        if saved is not None:
            self._undo.append((obj, (kind, saved)))
        return children


def _kind(obj) -> str | None:
    if isinstance(obj, nn.Module):
        return "module"
    for base in (list, dict, set, tuple):
        if isinstance(obj, base):
            return base.__name__
    if isinstance(obj, types.ModuleType):
        return "pymodule" if is_user_file(getattr(obj, "__file__", None) or "<") else None
    if isinstance(obj, (type, types.FunctionType, types.MethodType, types.BuiltinFunctionType)):
        return None
    if isinstance(obj, types.SimpleNamespace):
        return "object"
    file = getattr(sys.modules.get(getattr(type(obj), "__module__", "")), "__file__", None)
    if file and is_user_file(file) and hasattr(obj, "__dict__"):
        return "object"
    return None


def _module_state(m: nn.Module) -> tuple:
    data = {name: (p, p.data) for name, p in
            list(m._parameters.items()) + list(m._buffers.items()) if p is not None}
    return dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules), data


def _restore_one(obj, saved) -> None:
    kind, state = saved
    if kind == "list":
        if len(obj) != len(state) or any(a is not b for a, b in zip(obj, state)):
            obj[:] = state
    elif kind == "set":  # compared by identity: `==` on a traced value needs a tracer
        if {id(x) for x in obj} != {id(x) for x in state}:
            obj.clear()
            obj.update(state)
    elif kind == "dict":
        if [(id(k), id(v)) for k, v in dict.items(obj)] != [(id(k), id(v)) for k, v in
                                                             state.items()]:
            obj.clear()
            obj.update(state)
    elif kind == "module":
        d, params, buffers, mods, data = state
        obj.__dict__.clear()
        obj.__dict__.update(d)
        for current, saved in ((obj._parameters, params), (obj._buffers, buffers),
                               (obj._modules, mods)):
            current.clear()  # the module's own dicts, as they were
            current.update(saved)
        for p, value in data.values():
            if (p.data_ptr(), p.shape, p.dtype) != (value.data_ptr(), value.shape, value.dtype):
                p.data = value
    else:
        _restore_attrs(obj, state, drop_added=kind == "object")


def _restore_attrs(obj, state: dict, drop_added: bool) -> None:
    """Put back changed and removed attributes; drop added ones from plain objects (a
    Python module keeps them: imports during capture add submodules to packages)."""
    current = vars(obj)
    for key in [k for k in current if k not in state] if drop_added else ():
        del current[key]
    for key, value in state.items():
        if current.get(key, _MISSING) is not value:
            current[key] = value


_MISSING = object()
