"""FuseIntoOnnx: lower host branches and loops into ONNX `If` / `Loop` nodes.

ONNX Runtime costs ~5-8 us per `run()` call, more than many small regions compute, so
a gated network that dispatches one region per gate, or a decoding loop that dispatches
one region per step, is dominated by dispatch. A run of host statements made only of
region calls, `bool(tensor)` conditions, branches whose arms are such runs again, loops
whose body is one (with Python scalar arithmetic, comparisons and `.item()` reads, and
`break`), and assignments of tensors and Python int/bool/float values is rewritten into
ONE ONNX model (`onnx_build.Builder`): each region is inlined, each branch becomes an
`If` node (ONNX Runtime executes only the taken arm, so no work is added) and each loop
a `Loop` node (`onnx_loops.plan_loop` rewrites its breaks and list appends).

Cost rules (measured here, see benchmarks/README.md): an `If` node costs ~1-2 us inside
a session and a `Loop` iteration ~2 us, against ~6.5 us for a host-dispatched region
call, so every structurally fusable branch and loop is fused. Host dispatch stays for
early returns, loops over host containers, and branches or loops with other host work.
Python values the fused statements produce for later host code come back as 0-d
tensors and are converted back (`n = n__t.item()`); lists a fused loop appended to are
extended after the call.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

import onnx

from dycomp.backends.onnx_build import (
    BOOL,
    DOUBLE,
    INT64,
    Builder,
    CannotFuse,
    Tensor,
    branch_phis,
    literal_kind,
    op_kind,
)
from dycomp.backends.onnx_loops import NotLowerable, plan_loop
from dycomp.ir.dyngraph import Region
from dycomp.ir.outline import outline_of
from dycomp.ir.program import Assign, CallRegion, HostOp, If, Lit, Loop, Op, Var, expr_vars, walk
from dycomp.passes.carve import Names
from dycomp.passes.regions import tensor_vars
from dycomp.runtime.onnx_paths import drop_path

log = logging.getLogger(__name__)

# a 0-d int64 / float64 / bool tensor back to the Python int / float / bool: `.item()`,
# ~0.1 us cheaper than `int(t)` on the host's cold path after a session run
BACK = "item"
# the values of the iterations that appended (the flags say which, or which did not):
# Python's own loop over the few values, ~2 us faster after a run than numpy's boolean
# indexing (decoder, benchmarks/README.md)
EXTEND = "extend_where"  # {0}.extend([v for v, f in zip({1}.tolist(), {2}.tolist()) if f])
EXTEND_NEGATED = "extend_where_not"


def fuse_branches(graph, marks: dict | None = None) -> Counter:
    """Rewrite fusable runs of `graph.body` into fused ONNX regions; counts the branches
    and loops lowered into `If` / `Loop` nodes. Regions must carry `.onnx` models.
    `marks` (check-only builds): decision variable -> source line, marked in the fused
    models for the path check (`Builder.mark`)."""
    types, srcs, readers = var_types(graph), _sources(graph), _readers(graph)
    tensors = tensor_vars(graph)
    kinds = scalar_kinds(srcs, types, tensors, _read_as_bool(readers))
    fed = fed_vars(srcs, readers, tensors, kinds, types)
    fuser = _Fuser(graph, types, tensors, kinds, fed, readers)
    fuser.marks = marks or {}  # what `Builder.mark` marks (check-only builds)
    fuser.block(graph.body)
    live = {s.region for s in walk(graph.body) if isinstance(s, CallRegion)}
    for name in [n for n in graph.regions if n not in live]:
        del graph.regions[name]
    return fuser.lowered


def var_types(graph) -> dict:
    """ONNX type of every host variable a region reads (its input's type) or returns, or
    that is moved into one."""
    types: dict = {}
    for s in walk(graph.body):
        if isinstance(s, CallRegion):
            g = graph.regions[s.region].onnx.graph
            for v, i in zip(s.args, g.input):
                types.setdefault(v, i.type)
    for s in walk(graph.body):
        if isinstance(s, CallRegion):
            g = graph.regions[s.region].onnx.graph
            for v, o in zip(s.outs, g.output):
                types.setdefault(v, o.type)
    moves = [(d, x) for s in walk(graph.body) if isinstance(s, Assign)
             for d, x in zip(s.dsts, s.srcs) if isinstance(x, Var)]
    for _ in range(2):  # a value only ever moved into a variable a region reads: its type
        for d, x in moves:
            if d in types and x not in types:
                types[x] = types[d]
    return types


def _sources(graph) -> dict:
    """Every definition of each host variable: a Lit/Var, an Op, "range" or None."""
    srcs: dict = defaultdict(list)
    for s in walk(graph.body):
        if isinstance(s, Assign):
            for d, x in zip(s.dsts, s.srcs):
                srcs[d].append(x if isinstance(x, (Lit, Var)) else None)
        elif isinstance(s, HostOp) and s.out is not None:
            srcs[s.out].append(s.expr if isinstance(s.expr, Op) else None)
        elif isinstance(s, Loop) and s.target is not None:
            r = s.iter_expr.value if isinstance(s.iter_expr, Lit) else None
            srcs[s.target].append("range" if isinstance(r, range) else None)
        else:
            for d in s.defs():
                srcs[d].append(None)
    for p in graph.params:
        srcs[p].append(None)
    return srcs


def _readers(graph) -> dict:
    """The statements that read each host variable, once per read."""
    readers = defaultdict(list)
    for s in walk(graph.body):
        for v in s.uses():
            readers[v].append(s)
    return readers


def _read_as_bool(readers: dict) -> set:
    """Variables read only as truth values: `bool(v)`, `not v`, `if v:` (an `If` reads
    its condition only)."""
    return {v for v, ss in readers.items()
            if all(isinstance(s, If) or (isinstance(s, HostOp) and s.expr.name in
                                         ("bool", "not")) for s in ss)}


def scalar_kinds(srcs: dict, types: dict, tensors: set, as_bool: set = frozenset()) -> dict:
    """Host variables that hold a Python bool, int or float that ONNX can compute:
    {var: TensorProto element type}. `srcs`: `_sources(graph)`. A variable in `as_bool`
    (read only as a truth value) may also take bool tensors (`v = a and t`: a Python
    bool or a tensor)."""
    kinds: dict = {}

    def source_kind(d, x, strict):
        if d in as_bool and x in tensors and x in types and \
                types[x].tensor_type.elem_type == BOOL:
            return BOOL
        return kind(x, strict)

    def kind(x, strict):
        if x == "range":
            return INT64
        if isinstance(x, Lit):
            return literal_kind(x.value)
        if isinstance(x, Var):
            return kinds.get(x) if x in kinds or strict else "later"
        if not isinstance(x, Op):
            return None
        ops = [Tensor(types[a].tensor_type.elem_type) if isinstance(a, Var) and a in types
               and a in tensors
               else kind(a, strict) for a in x.args]
        if "later" in ops:
            return "later"
        return op_kind(x.name, ops)

    changed = True
    while changed:  # optimistic: a loop counter's kind comes from its first value
        changed = False
        for d, xs in srcs.items():
            found = {source_kind(d, x, False) for x in xs} - {"later"}
            if len(found) == 1 and None not in found and kinds.get(d) != min(found):
                kinds[d] = min(found)
                changed = True
    changed = True
    while changed:  # then every source must agree
        changed = False
        for d in list(kinds):
            if any(source_kind(d, x, True) != kinds[d] for x in srcs[d]):
                del kinds[d]
                changed = True
    return kinds


def fed_vars(srcs: dict, readers: dict, tensors: set, kinds: dict, types: dict) -> set:
    """Variables that are a tensor on some paths and a Python number on others (a sum
    that starts at 0.0), only ever passed to regions: the executor converts them to the
    region's input type, and so can the fused model."""
    fed = {d for d, xs in srcs.items() if d not in tensors and d not in kinds and d in types
           and all(isinstance(x, Var) or (isinstance(x, Lit) and literal_kind(x.value)
                                          in (INT64, DOUBLE)) for x in xs)}
    changed = True
    while changed:
        changed = False
        for d in list(fed):
            bad_src = any(isinstance(x, Var) and x not in tensors and x not in fed
                          for x in srcs[d])
            if bad_src or not all(_feeds(s, d, fed) for s in readers.get(d, ())):
                fed.discard(d)
                changed = True
    return fed


def _feeds(s, d, fed) -> bool:
    if isinstance(s, CallRegion):
        return True
    return isinstance(s, Assign) and all(t in fed for t, x in zip(s.dsts, s.srcs) if x == d)


class _Fuser:
    def __init__(self, graph, types, tensors, kinds, fed, readers):
        self.graph, self.types, self.tensors = graph, types, tensors
        self.kinds, self.fed = kinds, fed
        self.uses = Counter({v: len(ss) for v, ss in readers.items()})
        self.names = Names(graph, "lp")
        self.outside = Counter(d for s in walk(graph.body) for d in s.defs())
        self.outside.update(graph.params)
        self.plans: dict = {}
        self.live: set = set()
        self.in_loop = 0
        self.lowered = Counter()
        self.count = 0
        self.marks: dict = {}

    # -- which statements can go into one ONNX model ---------------------------------
    def ok(self, s) -> bool:
        if isinstance(s, CallRegion):
            r = self.graph.regions[s.region]
            return r.onnx is not None and not _has_subgraphs(r.onnx)
        if isinstance(s, HostOp):
            if s.out is None or not s.pure:
                return False
            if s.expr.name == "bool" and s.uses() and s.uses()[0] in self.tensors:
                return len(s.uses()) == 1
            return self.in_loop > 0 and s.out in self.kinds
        if isinstance(s, Assign):
            return all(self._assignable(d, x) for d, x in zip(s.dsts, s.srcs))
        if isinstance(s, If):
            phis, other = branch_phis(s, self.uses, self.live)
            return phis == other and all(self.ok(x) for x in s.then + s.orelse)
        if isinstance(s, Loop):
            return self._lowerable(s)
        return False

    def _assignable(self, d, x) -> bool:
        if d in self.tensors:
            return isinstance(x, Var) and x in self.tensors
        if d in self.kinds:  # a bool tensor too, into a truth value (`scalar_kinds`)
            return isinstance(x, Lit) or x in self.kinds or (
                self.kinds[d] == BOOL and x in self.tensors)
        return d in self.fed and (isinstance(x, Lit) or x in self.tensors or x in self.fed)

    def _lowerable(self, loop: Loop) -> bool:
        if id(loop) in self.plans:
            return True
        body_defs = Counter(d for s in walk(loop.body) for d in s.defs())
        outside = {d for d in self.outside if self.outside[d] > body_defs[d]}
        try:
            plan = plan_loop(loop, self.names.var, self.kinds, outside)
        except NotLowerable as e:
            log.debug("loop at %s stays on the host: %s", loop.line, e)
            return False
        synthetic = {plan.stop} | {v for a in plan.appends for v in (a.value, a.taken)}
        outer_live = self.live
        self.live = self.live | (set(body_defs) & outside) | synthetic
        self.in_loop += 1
        try:
            stuck = next((s for s in plan.header + plan.body if not self.ok(s)), None)
        finally:
            self.in_loop -= 1
            self.live = outer_live
        if stuck is not None:
            log.debug("loop at %s stays on the host: cannot lower %s", loop.line,
                      _describe(stuck))
        fits = stuck is None
        calls = any(isinstance(s, CallRegion) for s in walk(loop.body))
        if fits and calls:
            self.plans[id(loop)] = plan
        return fits and calls

    # -- rewriting ------------------------------------------------------------------------
    def block(self, body: list) -> None:
        """Fuse the runs of `body`, outermost first; then inside what stays on the host."""
        out, run, before = [], [], []
        for s in body + [None]:
            host, s = _split_literals(s, self._assignable) if isinstance(s, Assign) else ([], s)
            if s is not None and self.ok(s):
                before += host
                run.append(s)
                continue
            tail = []  # conditions for a branch left on the host: tested after the call
            while run and isinstance(run[-1], HostOp):
                tail.insert(0, run.pop())
            out += before + (self.fuse(run) if _worth(run) else run) + tail + host
            run, before = [], []
            if s is not None:
                out.append(s)
        body[:] = out
        for s in body:
            for b in s.blocks():
                self.block(b)

    def fuse(self, run: list) -> list:
        used_in = Counter(v for s in walk(run) for v in s.uses())
        lists = {a.lst for s in walk(run) if id(s) in self.plans
                 for a in self.plans[id(s)].appends}
        inputs = [v for v in _exposed(run) if v not in lists]  # appended to after the call
        outputs = [d for d in dict.fromkeys(d for s in walk(run) for d in s.defs())
                   if self.uses[d] > used_in[d]]
        if any(d not in self.tensors and d not in self.kinds and d not in self.fed
               for d in outputs):
            return run
        if not outputs and not lists:  # nothing it computes is used: a model without
            return run  # outputs would hold no node (the host still runs it, for the path)
        self.count += 1
        name = f"f{self.count}"
        b = Builder(self.graph, name, self.types, self.kinds, self.uses, self.plans)
        b.marks = self.marks
        try:
            traced = b.model(run, inputs, outputs)
        except CannotFuse as e:
            log.debug("not fusing %d statements at %s: %s", len(run), run[0].line, e)
            return run
        self.lowered.update(type(s).__name__ for s in walk(run) if isinstance(s, (If, Loop)))
        lines = list(dict.fromkeys(ln for s in walk(run) if isinstance(s, CallRegion)
                                   for ln in self.graph.regions[s.region].lines))
        self.graph.regions[name] = Region(name, None, lines, onnx=drop_path(traced),
                                          traced=traced, ran=b.ran,
                                          fused=self._outline(run))
        outs = [Var(f"{d.name}__t") if d in self.kinds else d for d in outputs]
        back = [HostOp(d, Op(BACK, (t,)), line=run[0].line)
                for d, t in zip(outputs, outs) if d in self.kinds]
        scans = [v for a, *_ in b.appends for v in (a.value, a.taken)]
        extend = [HostOp(None, Op(EXTEND_NEGATED if negated else EXTEND,
                                  (a.lst, a.value, a.taken)), pure=False, line=run[0].line)
                  for a, _, _, negated in b.appends]
        return [CallRegion(name, inputs, outs + scans, line=run[0].line)] + back + extend

    def _outline(self, run: list) -> dict:
        """What `run` was, for display: its branches, loops and region calls with their
        source lines (`runtime/controlflow.py`)."""
        regions = {s.region: list(self.graph.regions[s.region].lines[:3])
                   for s in walk(run) if isinstance(s, CallRegion)}
        return {"outline": outline_of(run), "regions": regions}


def _split_literals(s: Assign, fusable) -> tuple[list, Assign]:
    """(host part, rest) of an assignment: the host part sets variables the fused model
    cannot hold (`tokens = []`) to literals, so it can run before the fused statements."""
    keep = [fusable(d, x) or isinstance(x, Var) or bool(expr_vars(x))
            for d, x in zip(s.dsts, s.srcs)]
    if all(keep) or not any(keep):
        return [], s
    pick = [(d, x) for d, x, k in zip(s.dsts, s.srcs, keep) if not k]
    rest = [(d, x) for d, x, k in zip(s.dsts, s.srcs, keep) if k]
    host = Assign([d for d, _ in pick], [x for _, x in pick], line=s.line)
    return [host], Assign([d for d, _ in rest], [x for _, x in rest], line=s.line)


def _exposed(run: list) -> list:
    """Variables the run reads before it defines them (a loop's carried values
    included: the first iteration reads the value from before the loop)."""
    out: dict = {}

    def visit(stmts, defined):
        for s in stmts:
            for v in s.uses():
                if v not in defined:
                    out[v] = None
            inner = set(defined) | set(s.defs())
            for b in s.blocks():
                visit(b, set(inner))
            defined |= {d for x in walk([s]) for d in x.defs()}

    visit(run, set())
    return list(out)


def _describe(s) -> str:
    if isinstance(s, HostOp):
        return f"host operation `{s.expr.fmt if isinstance(s.expr, Op) else s.expr}` ({s.line})"
    return f"{type(s).__name__} ({s.line})"


def _worth(run) -> bool:
    calls = sum(isinstance(s, CallRegion) for s in walk(run))
    return any(isinstance(s, Loop) for s in run) or (
        calls >= 2 and any(isinstance(s, If) for s in run))


def _has_subgraphs(model) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for n in model.graph.node for a in n.attribute)
