"""Which local names an `if` must join: those live at its entry or after it.

An `if` arm that assigns a temporary the rest of the function never reads
(`if gate(x) > 0.5: h = blk(x); x = x + h` in a loop) need not join it with the other
arm, where it is undefined. Joining it anyway makes the value "defined on one path
only", which a later iteration's join then copies where it was never assigned. The
converter keeps such a name local to the arm instead.

The analysis is classic backward liveness over the function's statements, with exact
`break` / `continue` targets and loops iterated to a fixpoint. It is conservative: a
name read inside a nested function or lambda, declared `global` / `nonlocal`, or
deleted is always live, and a function holding any statement it does not model (`try`,
`with`, `match`, a class, `del`...) or calling `locals()`, `vars()`, `eval()`,
`exec()` or `dir()` keeps every name (None: no pruning).
"""

from __future__ import annotations

import ast

_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Pass, ast.Assert,
           ast.Raise, ast.Import, ast.ImportFrom)
_INTROSPECTION = {"locals", "vars", "eval", "exec", "dir", "globals"}


def live_names(fdef: ast.FunctionDef) -> dict[int, set[str]] | None:
    """id(`if` node) -> the names live at its entry or after it, for every `if` of `fdef`'s
    own body (nested functions excluded); None where the function is not modelled."""
    if not _modelled(fdef.body):
        return None
    return _Live(_pinned(fdef.body)).run(fdef.body)


class _Live:
    def __init__(self, pinned: set[str]):
        self.pinned = pinned
        self.keep: dict[int, set[str]] = {}
        self.loops: list[tuple[set[str], set[str]]] = []  # (continue target, break target)

    def run(self, body) -> dict[int, set[str]]:
        self.block(body, set())
        return self.keep

    def block(self, stmts, out: set[str]) -> set[str]:
        live = set(out)
        for s in reversed(stmts):
            live = self.stmt(s, live) | self.pinned
        return live

    def stmt(self, s, out: set[str]) -> set[str]:
        if isinstance(s, ast.If):
            entry = _uses(s.test) | self.block(s.body, out) | self.block(s.orelse, out)
            self.keep[id(s)] = entry | out | self.jumps(s)
            return entry
        if isinstance(s, (ast.While, ast.For)):
            return self.loop(s, out)
        if isinstance(s, ast.Break):
            return set(self.loops[-1][1])
        if isinstance(s, ast.Continue):
            return set(self.loops[-1][0])
        if isinstance(s, ast.Return):
            return _uses(s.value) if s.value is not None else set()
        if isinstance(s, ast.FunctionDef):  # binds its name; its reads are pinned
            return (out - {s.name}) | _uses(s.decorator_list) | _uses(s.args.defaults)
        return (out - _kills(s)) | _uses(s)

    def jumps(self, s: ast.If) -> set[str]:
        """What is live where the arms' `continue` and `break` (of the loop around the
        `if`) go: a value an arm assigns before one leaves with it."""
        live: set[str] = set()
        todo = list(s.body + s.orelse)
        while todo:
            n = todo.pop()
            if isinstance(n, ast.Continue):
                live |= self.loops[-1][0]
            elif isinstance(n, ast.Break):
                live |= self.loops[-1][1]
            elif not isinstance(n, (ast.For, ast.While, ast.FunctionDef, ast.Lambda)):
                todo.extend(ast.iter_child_nodes(n))
        return live

    def loop(self, s, out: set[str]) -> set[str]:
        """Live at the loop's entry: a fixpoint of its head (`for`: the target bound per
        iteration; `while`: the test read per iteration)."""
        head = set(out)
        while True:
            if isinstance(s, ast.While):
                top = head | _uses(s.test)
            else:
                top = head
            self.loops.append((top, out))
            body = self.block(s.body, top)
            self.loops.pop()
            if isinstance(s, ast.For):
                body = body - _names(s.target)
            new = out | body | (_uses(s.test) if isinstance(s, ast.While) else set())
            if new <= head:
                break
            head |= new
        return head | (_uses(s.iter) | _uses_in_target(s.target) if isinstance(s, ast.For)
                       else _uses(s.test))


def _modelled(body) -> bool:
    for n in _walk_own(body):
        if isinstance(n, ast.stmt) and not isinstance(n, (*_SIMPLE, ast.If, ast.While,
                                                          ast.For, ast.Break, ast.Continue,
                                                          ast.Return, ast.FunctionDef,
                                                          ast.Global, ast.Nonlocal)):
            return False
        if isinstance(n, (ast.While, ast.For)) and n.orelse:
            return False
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and (
                n.func.id in _INTROSPECTION):
            return False
    return True


def _pinned(body) -> set[str]:
    """Names every point keeps live: read in a nested function or lambda, declared global
    or nonlocal."""
    out: set[str] = set()
    for n in _walk_own(body):
        if isinstance(n, (ast.FunctionDef, ast.Lambda)):
            out |= {x.id for x in ast.walk(n) if isinstance(x, ast.Name)}
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out |= set(n.names)
    return out


def _walk_own(body):
    """The statements and expressions of `body`; nested functions and lambdas are yielded
    but not entered."""
    todo = list(body)
    while todo:
        n = todo.pop()
        yield n
        if not isinstance(n, (ast.FunctionDef, ast.Lambda, ast.AsyncFunctionDef,
                              ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(n))


def _uses(node) -> set[str]:
    """Every name `node` (a node, a list of nodes, or None) reads, comprehensions
    included; augmented assignment reads its target."""
    if node is None:
        return set()
    nodes = node if isinstance(node, list) else [node]
    out: set[str] = set()
    for root in nodes:
        for n in ast.walk(root):
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store):
                out.add(n.id)
            elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
                out.add(n.target.id)
    return out


def _kills(s) -> set[str]:
    """Names a simple statement certainly binds (plain or unpacked targets)."""
    if isinstance(s, ast.Assign):
        return set().union(*(_names(t) for t in s.targets))
    if isinstance(s, ast.AnnAssign) and s.value is not None:
        return _names(s.target)
    if isinstance(s, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in s.names}
    return set()  # AugAssign reads its target first: no kill


def _names(t) -> set[str]:
    if isinstance(t, ast.Name):
        return {t.id}
    if isinstance(t, (ast.Tuple, ast.List)):
        return set().union(*(_names(e) for e in t.elts)) if t.elts else set()
    if isinstance(t, ast.Starred):
        return _names(t.value)
    return set()  # an attribute or subscript store binds no local name


def _uses_in_target(t) -> set[str]:
    """Names a `for` target reads (`for a[i] in ...` reads `a` and `i`)."""
    return {n.id for n in ast.walk(t) if isinstance(n, ast.Name)} - _names(t)
