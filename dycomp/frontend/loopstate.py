"""State a host loop carries through objects: attributes and containers changed inside
the functions the loop body calls (`self.fc.hidden = h` in a called module,
`memory.hidden.append(h)` in a callee), which the loop's own source does not show.

Before a host loop's body is traced, the attributes of the objects the loop can reach
(the capture's root module and the locals of the user frames on the stack, then their
submodules and plain attribute objects) are recorded. After the trace, every attribute
whose value was replaced, or whose list / dict / set was changed in place, becomes a
loop-carried slot like a local variable, and the body is traced again. A container held
only by a local variable and changed through another name cannot be rebound: that raises.
"""

from __future__ import annotations

import sys
import types

import torch
from torch import nn

from dycomp.frontend.tracer import is_user_file
from dycomp.frontend.values import UNDEF, HVal, TVal

_MODULE_BASE = frozenset(nn.Module().__dict__) | {"training"}
_CONTAINERS = (list, dict, set)
_MAX_DEPTH = 4
_MISSING = object()


def _contents(v):
    """A shallow copy of a list / dict / set (its items, to compare and put back)."""
    return type(v)(v) if type(v) in _CONTAINERS else None


def _ids(c):
    if isinstance(c, dict):
        return [(k, id(x)) for k, x in c.items()]
    return None if c is None else [id(x) for x in c]


def _plain(v) -> bool:
    """A user object whose attributes may hold state (not a tensor, module, function,
    class, Python module or traced value)."""
    if isinstance(v, (torch.Tensor, nn.Module, HVal, type, types.ModuleType, types.FunctionType,
                      types.MethodType, types.BuiltinFunctionType)):
        return False
    return hasattr(v, "__dict__") and is_user_file(
        getattr(sys.modules.get(type(v).__module__), "__file__", None) or "<")


def _attrs(obj):
    d = getattr(obj, "__dict__", {})
    if isinstance(obj, nn.Module):
        return [(k, v) for k, v in d.items() if k not in _MODULE_BASE and not (
            k.startswith("_") and not is_user_file(sys.modules[type(obj).__module__].__file__
                                                   or "<"))]
    return list(d.items())


class LoopState:
    """Discovers the carried attributes of one host loop and extends its get/set."""

    def __init__(self, tr, get, set_):
        self.tr, self._get, self._set = tr, get, set_
        self.slots: list[tuple[object, str]] = []
        self.n_locals = len(tuple(get()))
        self.snap = self._snapshot()

    # -- get/set over locals (the converted code's slots) and the discovered attributes --
    def get(self):
        base = tuple(self._get())
        return base + tuple(getattr(o, n, UNDEF) for o, n in self.slots)

    def set(self, values):
        self._set(values)
        for (o, n), v in zip(self.slots, values[self.n_locals:]):
            if v is not UNDEF:
                setattr(o, n, v)

    # -- discovery --------------------------------------------------------------------
    def _snapshot(self) -> dict:
        """(id(obj), name) -> (obj, name, value, contents); (id(list), None) for
        containers held by locals."""
        snap: dict = {}
        roots = [(self.tr.root, 0)] if getattr(self.tr, "root", None) is not None else []
        for frame_locals in _user_locals():
            for v in frame_locals.values():
                if isinstance(v, _CONTAINERS):
                    snap[(id(v), None)] = (v, None, v, _contents(v))
                roots.append((v, 1))
        snap.update(snapshot(roots))
        return snap

    def discover(self, body_values) -> bool:
        """After a trace of the body: add the attributes it changed (True if any is new;
        the objects are then put back as they were, to trace the body again)."""
        final = {id(v) for v in body_values or ()}
        new = []
        for (_oid, name), (obj, _, value, contents) in self.snap.items():
            now = getattr(obj, name, _MISSING) if name is not None else obj
            changed = now is not value or _ids(_contents(now)) != _ids(contents)
            if not changed or (obj, name) in self.slots:
                continue
            if name is None:
                self.tr.fail(f"a {type(obj).__name__} held by a local variable is changed "
                             "inside a called function, in a data-dependent loop",
                             "change it in the loop's own code, or keep it in an attribute")
            if isinstance(now, (TVal, HVal)) and id(now) in final:
                continue  # the loop's own code assigns it: already carried
            new.append((obj, name))
        for obj, name in new:
            if any(o is obj and n == name for o, n in self.slots):
                continue
            self.slots.append((obj, name))
        if new:
            self.restore()
        return bool(new)

    def restore(self) -> None:
        restore_entries(self.snap.values())


def snapshot(roots) -> dict:
    """The attributes of the objects reachable from `roots` ((object, depth) pairs):
    modules, their submodules, and plain user objects held in attributes."""
    snap: dict = {}
    seen: set = set()
    todo = list(roots)
    while todo:
        obj, depth = todo.pop()
        if id(obj) in seen or depth > _MAX_DEPTH or not (
                isinstance(obj, nn.Module) or _plain(obj)):
            continue
        seen.add(id(obj))
        for name, v in _attrs(obj):
            snap[(id(obj), name)] = (obj, name, v, _contents(v))
            todo.append((v, depth + 1))
        if isinstance(obj, nn.Module):
            todo += [(m, depth) for m in obj._modules.values() if m is not None]
    return snap


def restore_entries(entries) -> None:
    """Put attributes and container contents back as they were recorded."""
    for obj, name, value, contents in entries:
        if name is not None:
            if value is _MISSING:
                obj.__dict__.pop(name, None)
            elif getattr(obj, name, _MISSING) is not value:
                obj.__dict__[name] = value
        if contents is not None and _ids(_contents(value)) != _ids(contents):
            value.clear()
            value.update(contents) if isinstance(value, (dict, set)) else value.extend(contents)


def _user_locals():
    f = sys._getframe(2)
    while f is not None:
        if is_user_file(f.f_code.co_filename):
            yield f.f_locals
        f = f.f_back
