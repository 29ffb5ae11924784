"""AutoGraph-style source conversion.

A user function is re-parsed and its control flow is rewritten into calls of
dycomp's operators (`if_`, `while_`, `for_`, `call`, ...) so that a condition
on a traced tensor becomes a host branch instead of a Python `bool()`:

    if c: A else: B      ->  r = _dyc.if_(c, then_fn, else_fn, get, set, names, loc)
    return v             ->  return _dyc.Ret(v)
    break / continue     ->  return _dyc.BREAK / _dyc.CONTINUE

Concrete conditions still run as plain Python inside the operators.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import os
import textwrap
import types

from dycomp.errors import UnsupportedError
from dycomp.frontend.liveness import live_names

MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "update", "add",
            "setdefault", "discard", "sort", "reverse", "popitem"}
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
           ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _chain(node) -> str | None:
    """'self.a.b' for an attribute chain rooted at a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return None


def _walk_scope(nodes):
    """ast.walk that does not descend into nested scopes."""
    todo = list(nodes)
    while todo:
        n = todo.pop()
        yield n
        for c in ast.iter_child_nodes(n):
            if not isinstance(c, _SCOPES):
                todo.append(c)
            elif isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield c  # the def binds its name here


def _target_names(t, out: list):
    if isinstance(t, ast.Name):
        out.append(t.id)
    elif isinstance(t, (ast.Tuple, ast.List)):
        for e in t.elts:
            _target_names(e, out)
    elif isinstance(t, ast.Starred):
        _target_names(t.value, out)
    elif isinstance(t, ast.Attribute) and _chain(t):
        out.append(_chain(t))


def assigned(stmts, bindings: bool = False) -> list[str]:
    """Names and attribute chains a block assigns or mutates (slots of a join); with
    `bindings`, only those it binds (`g.append(x)`, `g[k] = x` leave a global `g` global)."""
    out: list[str] = []
    for n in _walk_scope(stmts):
        if isinstance(n, (ast.Assign,)):
            for t in n.targets:
                _target_names(t, out)
        elif isinstance(n, (ast.AugAssign, ast.AnnAssign)):
            _target_names(n.target, out)
        elif isinstance(n, (ast.For, ast.comprehension)):
            _target_names(n.target, out)
        elif isinstance(n, ast.withitem) and n.optional_vars is not None:
            _target_names(n.optional_vars, out)
        elif isinstance(n, ast.NamedExpr):
            _target_names(n.target, out)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out += [(a.asname or a.name).split(".")[0] for a in n.names]
        elif bindings:
            continue
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            a = n.func.attr
            inplace = a.endswith("_") and not a.startswith("_")  # tensor.add_(...)
            if (a in MUTATORS or inplace) and _chain(n.func.value):
                out.append(_chain(n.func.value))
        elif isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Store):
            if _chain(n.value):
                out.append(_chain(n.value))
    return list(dict.fromkeys(x for x in out if not x.startswith("_dyc")))


def _undefined(names) -> list[ast.stmt]:
    """`name = UNDEF` for each name: locals a function (or an arm, for the temporaries it
    keeps to itself: `liveness`) has not assigned yet."""
    return [ast.Assign(targets=[_name(n, ast.Store())], value=_dyc("UNDEF")) for n in names]


def _can_exit(stmts) -> bool:
    """Whether a loop body may leave the loop early (`break`, not in a nested loop, or
    `return`)."""
    todo = list(stmts)
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.Break, ast.Return)):
            return True
        if isinstance(n, (ast.For, ast.While)):
            todo += [x for x in ast.walk(n) if isinstance(x, ast.Return)]
        elif not isinstance(n, _SCOPES):
            todo += list(ast.iter_child_nodes(n))
    return False


def _locate(n, node):
    """Place a generated node on the first line of the statement it stands for (CPython
    reports calls at their end line, so the end stays on that line too)."""
    n.lineno = n.end_lineno = node.lineno
    n.col_offset = n.end_col_offset = node.col_offset


def _name(id_, ctx=None):
    return ast.Name(id=id_, ctx=ctx or ast.Load())


def _dyc(attr):
    return ast.Attribute(value=_name("_dyc"), attr=attr, ctx=ast.Load())


def _call(fn, *args, **kw):
    return ast.Call(func=fn if isinstance(fn, ast.AST) else _dyc(fn), args=list(args),
                    keywords=[ast.keyword(arg=k, value=v) for k, v in kw.items()])


def _const(v):
    return ast.Constant(value=v)


def _lambda(body, args=()):
    a = ast.arguments(posonlyargs=[], args=[ast.arg(arg=x) for x in args], kwonlyargs=[],
                      kw_defaults=[], defaults=[])
    return ast.Lambda(args=a, body=body)


def _def(name, body, args=(), nonlocals=()):
    body = list(body) or [ast.Pass()]
    if nonlocals:
        body.insert(0, ast.Nonlocal(names=list(nonlocals)))
    a = ast.arguments(posonlyargs=[], args=[ast.arg(arg=x) for x in args], kwonlyargs=[],
                      kw_defaults=[], defaults=[])
    return ast.FunctionDef(name=name, args=a, body=body, decorator_list=[], returns=None,
                           type_params=[])


def _load_chain(chain: str):
    parts = chain.split(".")
    if len(parts) == 1:
        return _name(parts[0])
    obj = _name(parts[0])
    for p in parts[1:-1]:
        obj = ast.Attribute(value=obj, attr=p, ctx=ast.Load())
    return _call("attr", obj, _const(parts[-1]))


def _store_chain(chain: str, value) -> ast.stmt:
    parts = chain.split(".")
    if len(parts) == 1:
        return ast.Assign(targets=[_name(parts[0], ast.Store())], value=value)
    obj = _name(parts[0])
    for p in parts[1:-1]:
        obj = ast.Attribute(value=obj, attr=p, ctx=ast.Load())
    return ast.Expr(_call("setattr_", obj, _const(parts[-1]), value))


class _Converter(ast.NodeTransformer):
    def __init__(self, filename: str, class_name: str | None):
        self.filename = os.path.basename(filename)
        self.class_name = class_name
        self.counter = 0
        self.locals_stack: list[set[str]] = []
        self.live: dict[int, set[str]] = {}  # id(if) -> names it must join (`liveness`)
        self.first_args: list = []  # per function: its first parameter (zero-arg super())

    def visit(self, node):
        new = super().visit(node)
        if isinstance(new, ast.expr) and new is not node and "lineno" in node._attributes:
            for n in ast.walk(new):
                if not hasattr(n, "lineno"):
                    _locate(n, node)
        return new

    # -- helpers -----------------------------------------------------------
    def _fresh(self, kind):
        self.counter += 1
        return f"_dyc_{kind}_{self.counter}"

    def _loc(self, node):
        return _const(f"{self.filename}:{node.lineno}")

    def _state(self, slots):
        """get/set functions over the slots of a join."""
        locals_ = self.locals_stack[-1]
        names = [s for s in slots if "." not in s and s in locals_]
        chains = [s for s in slots if "." in s]
        slots = names + chains
        get = _def(self._fresh("get"), [ast.Return(ast.Tuple(
            elts=[_load_chain(s) for s in slots], ctx=ast.Load()))])
        v = self._fresh("v")
        sets = [_store_chain(s, ast.Subscript(value=_name(v), slice=_const(i), ctx=ast.Load()))
                for i, s in enumerate(slots)]
        set_ = _def(self._fresh("set"), sets, args=[v], nonlocals=names)
        return get, set_, slots, names

    def _propagate(self, call):
        r = self._fresh("r")
        return [ast.Assign(targets=[_name(r, ast.Store())], value=call),
                ast.If(test=ast.Compare(left=_name(r), ops=[ast.IsNot()],
                                        comparators=[_const(None)]),
                       body=[ast.Return(_name(r))], orelse=[])]

    @staticmethod
    def _at(node, stmts):
        """Generated statements carry the source location of the statement they replace."""
        for s in stmts:
            for n in ast.walk(s):
                if "lineno" in n._attributes and not hasattr(n, "lineno"):
                    _locate(n, node)
        return stmts

    def _block(self, stmts):
        out = []
        for s in stmts:
            r = self.visit(s)
            out += r if isinstance(r, list) else [r]
        return out

    # -- functions -----------------------------------------------------------
    def visit_FunctionDef(self, node, top=False):
        a = node.args
        params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        params += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
        declared = {n for s in _walk_scope(node.body) if isinstance(s, (ast.Global, ast.Nonlocal))
                    for n in s.names}
        locs = {x for x in assigned(node.body, bindings=True) if "." not in x} - declared
        self.locals_stack.append(locs | set(params))
        self.live.update(live_names(node) or {})
        self.first_args.append((a.posonlyargs + a.args or [None])[0])
        body = self._block(node.body)
        self.first_args.pop()
        self.locals_stack.pop()
        node.body = _undefined(sorted(locs - set(params))) + body
        node.decorator_list = [] if top else [_dyc("converted")]
        node.returns = None
        return node

    def visit_AsyncFunctionDef(self, node):
        raise UnsupportedError("async def", f"{self.filename}:{node.lineno}",
                               "dynamic networks must be synchronous")

    def visit_Lambda(self, node):
        self.locals_stack.append(self.locals_stack[-1] | {x.arg for x in node.args.args})
        node.body = self.visit(node.body)
        self.locals_stack.pop()
        return node

    # -- statements ------------------------------------------------------------
    def visit_Return(self, node):
        value = self.visit(node.value) if node.value is not None else _const(None)
        return ast.Return(_call("Ret", value))

    def visit_Break(self, node):
        return ast.Return(_dyc("BREAK"))

    def visit_Continue(self, node):
        return ast.Return(_dyc("CONTINUE"))

    def visit_If(self, node):
        src = ast.unparse(node.test)
        slots = assigned(node.body + node.orelse)
        live = self.live.get(id(node))
        local = [] if live is None else [s for s in slots if "." not in s and s not in live]
        get, set_, slots, names = self._state([s for s in slots if s not in local])
        then = _def(self._fresh("then"), _undefined(local) + self._block(node.body),
                    nonlocals=names)
        orelse = _def(self._fresh("else"), _undefined(local) + self._block(node.orelse),
                      nonlocals=names)
        call = _call("if_", self.visit(node.test), _name(then.name), _name(orelse.name),
                     _name(get.name), _name(set_.name), self._loc(node), _const(src))
        return self._at(node, [then, orelse, get, set_] + self._propagate(call))

    def visit_While(self, node):
        self._no_else(node)
        src = ast.unparse(node.test)
        get, set_, slots, names = self._state(assigned(node.body + [node.test]))
        cond = _def(self._fresh("cond"), [ast.Return(self.visit(node.test))], nonlocals=names)
        body = _def(self._fresh("body"), self._block(node.body), nonlocals=names)
        call = _call("while_", _name(cond.name), _name(body.name), _name(get.name),
                     _name(set_.name), self._loc(node), _const(src),
                     _const(_can_exit(node.body)))
        return self._at(node, [cond, body, get, set_] + self._propagate(call))

    def visit_For(self, node):
        self._no_else(node)
        src = f"for {ast.unparse(node.target)} in {ast.unparse(node.iter)}"
        get, set_, slots, names = self._state(assigned(node.body + [node]))
        item = self._fresh("item")
        bind = ast.Assign(targets=[node.target], value=_name(item))
        body = _def(self._fresh("body"), [bind] + self._block(node.body), args=[item],
                    nonlocals=names)
        call = _call("for_", self.visit(node.iter), _name(body.name), _name(get.name),
                     _name(set_.name), self._loc(node), _const(src),
                     _const(_can_exit(node.body)))
        return self._at(node, [body, get, set_] + self._propagate(call))

    def _no_else(self, node):
        if node.orelse:
            raise UnsupportedError("loop `else:` clause", f"{self.filename}:{node.lineno}",
                                   "move the else-block after the loop behind a flag")

    def visit_Assert(self, node):
        msg = self.visit(node.msg) if node.msg is not None else _const(None)
        return ast.Expr(_call("assert_", self.visit(node.test), _lambda(msg), self._loc(node)))

    def visit_Raise(self, node):
        exc = self.visit(node.exc) if node.exc is not None else _const(None)
        return ast.Expr(_call("raise_", exc, self._loc(node)))

    def visit_Try(self, node):
        """try_(body, [(classes, handler(e))...], else, finally, get, set, loc)."""
        stmts = node.body + node.orelse + node.finalbody + [
            s for h in node.handlers for s in h.body]
        get, set_, slots, names = self._state(assigned(stmts))
        body = _def(self._fresh("try"), self._block(node.body), nonlocals=names)
        defs, handlers = [body], []
        for h in node.handlers:
            fn = _def(self._fresh("except"), self._block(h.body), args=[h.name or "_dyc_e"],
                      nonlocals=[n for n in names if n != h.name])
            defs.append(fn)
            classes = self.visit(h.type) if h.type is not None else _const(None)
            handlers.append(ast.Tuple(elts=[classes, _name(fn.name)], ctx=ast.Load()))
        extra = []
        for block in (node.orelse, node.finalbody):
            fn = _def(self._fresh("tryelse"), self._block(block), nonlocals=names)
            if block:
                defs.append(fn)
            extra.append(_name(fn.name) if block else _const(None))
        call = _call("try_", _name(body.name), ast.List(elts=handlers, ctx=ast.Load()), *extra,
                     _name(get.name), _name(set_.name), self._loc(node))
        return self._at(node, defs + [get, set_] + self._propagate(call))

    def visit_TryStar(self, node):
        raise UnsupportedError("try/except*", f"{self.filename}:{node.lineno}",
                               "use a plain except")

    def visit_Match(self, node):
        raise UnsupportedError("match statement", f"{self.filename}:{node.lineno}",
                               "rewrite it as if/elif")

    def visit_Yield(self, node):
        raise UnsupportedError("generator (yield)", f"{self.filename}:{node.lineno}",
                               "return a list instead")

    visit_YieldFrom = visit_Yield

    # -- expressions -------------------------------------------------------------
    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "super" and not node.args \
                and self.first_args and self.first_args[-1] is not None:
            # explicit, so that it still works inside the lambdas `or_` / `ifexp` get
            node.args = [_name("__class__"), _name(self.first_args[-1].arg)]
            return node
        if isinstance(node.func, ast.Name) and node.func.id in ("super", "locals", "globals",
                                                                "vars"):
            return node
        return ast.Call(func=_dyc("call"), args=[node.func] + node.args, keywords=node.keywords)

    def visit_IfExp(self, node):
        self.generic_visit(node)
        return _call("ifexp", node.test, _lambda(node.body), _lambda(node.orelse),
                     self._loc(node))

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        fn = "and_" if isinstance(node.op, ast.And) else "or_"
        return _call(fn, *[_lambda(v) for v in node.values])

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return _call("not_", node.operand) if isinstance(node.op, ast.Not) else node

    def visit_Compare(self, node):
        self.generic_visit(node)
        special = {ast.In: "in_", ast.NotIn: "not_in", ast.Is: "is_", ast.IsNot: "is_not"}
        if len(node.ops) == 1 and type(node.ops[0]) in special:
            return _call(special[type(node.ops[0])], node.left, node.comparators[0])
        return node

    def visit_JoinedStr(self, node):
        """f"a{x!r:>4}b" -> fstring("a", (x, conversion, spec), "b"): Python would format
        a traced value as its example (fstrings.py)."""
        self.generic_visit(node)
        parts = []
        for v in node.values:
            if isinstance(v, ast.FormattedValue):
                spec = v.format_spec if v.format_spec is not None else _const("")
                parts.append(ast.Tuple(elts=[v.value, _const(v.conversion), spec],
                                       ctx=ast.Load()))
            else:
                parts.append(v)
        return _call("fstring", *parts)

    def visit_Subscript(self, node):
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load):
            return _call("getitem", node.value, self._index(node.slice))
        node.slice = self._index(node.slice)
        return node

    def _index(self, s):
        if isinstance(s, ast.Slice):
            return _call(_name("slice"), *[x if x is not None else _const(None)
                                           for x in (s.lower, s.upper, s.step)])
        if isinstance(s, ast.Tuple):
            return ast.Tuple(elts=[self._index(e) for e in s.elts], ctx=ast.Load())
        return s

    def visit_Attribute(self, node):
        self.generic_visit(node)
        a = node.attr
        if self.class_name and a.startswith("__") and not a.endswith("__"):
            node.attr = f"_{self.class_name.lstrip('_')}{a}"  # private name mangling
        return node

    def _visit_comp(self, node):
        src = ast.unparse(node)
        inner = {n.id for g in node.generators for n in ast.walk(g.target)
                 if isinstance(n, ast.Name)}
        free = sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                       and n.id in self.locals_stack[-1] and n.id not in inner})
        self.locals_stack.append(self.locals_stack[-1] - inner)
        self.generic_visit(node)
        self.locals_stack.pop()
        env = ast.Dict(keys=[_const(f) for f in free], values=[_name(f) for f in free])
        return _call("comp", _lambda(node), _const(src), _lambda(env), self._loc(node))

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_comp


def _parse(filename, firstline):
    """The function's source as an AST, at its lines in the file (parsed once per code
    object: `convert` caches the compiled result; the tree is then rewritten in place)."""
    lines = linecache.getlines(filename)
    if not lines:
        raise OSError("no source")
    src = textwrap.dedent("".join(inspect.getblock(lines[firstline - 1:])))
    tree = ast.parse(src)
    ast.increment_lineno(tree, firstline - 1)
    return tree


def convert(fn: types.FunctionType):
    """Return the converted version of a plain function (not bound)."""
    cached = _CACHE.get(fn.__code__)
    if cached is not None:
        return _instantiate(fn, *cached)
    code = fn.__code__
    qual = fn.__qualname__.split(".")
    class_name = qual[-2] if len(qual) >= 2 and qual[-2] != "<locals>" else None
    try:
        tree = _parse(code.co_filename, code.co_firstlineno)
    except (OSError, SyntaxError, IndexError) as e:
        if fn.__name__ == "<lambda>":
            return fn  # its ops are still recorded; a data-dependent `if` in it raises
        raise UnsupportedError(
            f"cannot read the source of {fn.__qualname__} ({e})",
            f"{code.co_filename}:{code.co_firstlineno}",
            "define the model in a .py file (not a REPL / exec string)") from None
    fdef = tree.body[0]
    if fn.__name__ == "<lambda>":
        fdef = _lambda_def(tree, code)
        if fdef is None:
            return fn
    if isinstance(fdef, ast.Expr) and isinstance(fdef.value, ast.Lambda):
        raise UnsupportedError("lambda as a method", f"{code.co_filename}:{code.co_firstlineno}",
                               "use a def")
    if not isinstance(fdef, ast.FunctionDef):
        raise UnsupportedError(f"cannot convert {fn.__qualname__}",
                               f"{code.co_filename}:{code.co_firstlineno}", "use a plain def")
    conv = _Converter(code.co_filename, class_name)
    fdef = conv.visit_FunctionDef(fdef, top=True)
    freevars = list(code.co_freevars)
    factory = _def("_dyc_factory", [fdef, ast.Return(_name(fdef.name))], args=["_dyc"] + freevars)
    mod = ast.fix_missing_locations(ast.Module(body=[factory], type_ignores=[]))
    compiled = compile(mod, code.co_filename, "exec")
    _CACHE[code] = (compiled, freevars)
    return _instantiate(fn, compiled, freevars)


_CACHE: dict = {}


def _lambda_def(tree, code) -> ast.FunctionDef | None:
    """`lambda args: body` (e.g. `self.act = lambda x: x * 2`) as `def _dyc_lambda(args):
    return body`, if exactly one lambda on its line takes its arguments."""
    names = list(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])
    found = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)
             and n.lineno == code.co_firstlineno
             and [a.arg for a in n.args.posonlyargs + n.args.args + n.args.kwonlyargs] == names
             and bool(n.args.vararg) == bool(code.co_flags & inspect.CO_VARARGS)]
    if len(found) != 1:
        return None
    lam = found[0]
    fdef = ast.FunctionDef(name="_dyc_lambda", args=lam.args,
                           body=[ast.Return(lam.body, lineno=lam.lineno,
                                            col_offset=lam.col_offset)],
                           decorator_list=[], returns=None, type_params=[])
    return ast.copy_location(fdef, lam)


def _instantiate(fn, compiled, freevars):
    from dycomp.frontend import ops

    g = dict(fn.__globals__)
    exec(compiled, g)
    cells = [c.cell_contents for c in (fn.__closure__ or ())]
    new = g["_dyc_factory"](ops, *cells)
    new.__defaults__, new.__kwdefaults__ = fn.__defaults__, fn.__kwdefaults__
    new._dyc_converted = True
    return new
