"""Forcing the decisions inside fused ONNX models, for the path check (`check_paths.py`).

With backend onnx, host branches and loops are fused into ONNX `If` / `Loop` nodes
(`backends/onnx_fuse.py`): their decisions are no longer host reads to force. Here the
fusion is rebuilt on a copy of the graph as it was before fusion, with each decision's
value passed through a marker node (`Builder.mark`: `Identity`, named `MARK:<site>:<i>`).
The markers are then moved into a copy of the shipped model, whose nodes must pair
with the rebuilt ones name by name, graph by graph (`transplant`): the nodes, arms and
weights that run are the shipped ones (a fault in them stays), only the readers of a
decision read its marker. Where they do not pair (moe: the shipped model gathered a
switch's cases into one graph, `onnx_switch`, which the markers on the cases prevent),
the check falls back to the unfused program (`NotForceable`, the reason).

For the forced runs each marker becomes a lookup in a plan fed as inputs: `PLAN` (int64
[sites, K]: per site, the answer of its next occurrences, -1 for "as computed") and
`COUNTS` (int64 [sites]: the occurrences read so far in this run). A state (the counts
and the log of decisions taken) is threaded through the graph in node order, through
`If` arms (two more outputs) and `Loop` bodies (two more carried values), so a decision
in a loop is counted per iteration, as the host program counts it. The log comes back
as outputs and is replayed into the host's forcer (`Forcer`), which thus sees the
decisions in the order the unfused program would read them. A marker in arms computed
whether taken or not (speculated, `Where`-selected) counts only where the conditions of
those arms take it (`GUARDS`, `Builder.guard`).
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dycomp.backends.onnx_conditions import GUARDS, MARK
from dycomp.backends.onnx_switch import SWITCH
from dycomp.check_forcing import _DECISION, _scalar_compares
from dycomp.ir.program import Var

log = logging.getLogger(__name__)

PLAN, COUNTS = "dycomp_plan", "dycomp_counts"
COUNTS_OUT, TAKEN_OUT = "dycomp_counts_out", "dycomp_taken"
_GRAPH = onnx.AttributeProto.GRAPH
_INT64 = TensorProto.INT64
_MARK = re.compile(rf"^{MARK}:(.+):\d+$")


class NotForceable(Exception):
    """A fused model whose decisions cannot be forced (a reason)."""


def decision_marks(source: str) -> dict:
    """The unfused host program's decision variables -> their source lines: the reads the
    path check forces there (`check_forcing.forced_source`)."""
    marks = {Var(m.group(2)): m.group(4) for m in _DECISION.finditer(source)}
    marks.update({Var(m.group(2)): m.group(4) for m in _scalar_compares(source)})
    return marks


def marked_fusion(cm) -> tuple[str, dict, dict]:
    """(fused host source, {fused region: marked traced model}, {region: the regions its
    path ids name}) rebuilt from `cm`'s graph before fusion; raises `NotForceable` when
    it is not the shipped program (see the module docstring)."""
    from dycomp.backends.onnx_backend import fusion_snapshot
    from dycomp.backends.onnx_fuse import fuse_branches

    before = getattr(cm.executor, "before_fusion", None)
    if before is None:
        raise NotForceable("no copy of the program before fusion")
    graph = fusion_snapshot(before)
    fuse_branches(graph, decision_marks(cm.executor.unfused[0]))
    source = graph.host_source()
    if source != cm.host_source:
        raise NotForceable("the rebuilt host program differs from the shipped one")
    models, ran = {}, {}
    for name, r in graph.regions.items():
        shipped = cm.graph.regions.get(name)
        if r.traced is None:
            continue
        if shipped is None or shipped.traced is None:
            raise NotForceable(f"no shipped fused model {name}")
        models[name], ran[name] = transplant(r.traced, shipped.traced, name), list(r.ran)
    return source, models, ran


def transplant(marked: onnx.ModelProto, shipped: onnx.ModelProto, name: str
               ) -> onnx.ModelProto:
    """A copy of the `shipped` model with `marked`'s markers: the shipped nodes, arms
    and weights as they are (a fault in them stays), only the nodes that read a marked
    decision in `marked` reading the marker. The two must pair node by node (same
    names, graph by graph); else `NotForceable`."""
    m = onnx.ModelProto()
    m.CopyFrom(shipped)
    _transplant(marked.graph, m.graph, {}, name)
    m.metadata_props.extend(p for p in marked.metadata_props if p.key == GUARDS)
    return m


def _transplant(mg: onnx.GraphProto, sg: onnx.GraphProto, marked: dict, name: str) -> None:
    marks = [n for n in mg.node if _MARK.match(n.name)]
    rest = [n for n in mg.node if not _MARK.match(n.name)]
    if [n.name for n in rest] != [n.name for n in sg.node] or len(mg.output) != len(sg.output):
        raise NotForceable(f"the fused model {name} does not pair with its marked rebuild"
                           + _why_unpaired(mg, sg))
    marked = {**marked, **{n.output[0]: n.input[0] for n in marks}}
    after: dict = {}  # index of the node before (-1: none) -> the markers that follow it
    placed = -1
    for n in mg.node:
        if _MARK.match(n.name):
            after.setdefault(placed, []).append(n)
        else:
            placed += 1
    nodes = list(after.get(-1, []))
    for i, (a, b) in enumerate(zip(rest, sg.node)):
        _rewire(a.input, b.input, marked, name)
        subs = {s.name: s.g for s in b.attribute if s.type == _GRAPH}
        for s in a.attribute:
            if s.type == _GRAPH:
                _transplant(s.g, subs[s.name], marked, name)
        nodes.append(b)
        nodes += after.get(i, [])
    names = [o.name for o in sg.output]
    _rewire([o.name for o in mg.output], names, marked, name)
    for o, n in zip(sg.output, names):
        o.name = n
    del sg.node[:]
    sg.node.extend(nodes)


def _rewire(marked_reads, shipped_reads, marked: dict, name: str) -> None:
    """The shipped reads of what the marked ones read through a marker, read from it."""
    if len(marked_reads) != len(shipped_reads):
        raise NotForceable(f"the fused model {name} does not pair with its marked rebuild")
    for i, x in enumerate(marked_reads):
        if x in marked:
            if shipped_reads[i] != _real(x, marked):
                raise NotForceable(f"a decision of the fused model {name} is read elsewhere "
                                   "in the marked rebuild")
            shipped_reads[i] = x


def _why_unpaired(mg: onnx.GraphProto, sg: onnx.GraphProto) -> str:
    """A known cause: a switch the shipped model gathered into one graph
    (`onnx_switch.gather_switches`), which the markers on its cases kept as `If`s."""
    def switches(g):
        return sum((n.op_type == "If" and n.name.startswith(SWITCH))
                   + sum(switches(a.g) for a in n.attribute if a.type == _GRAPH)
                   for n in g.node)
    return ": its switch cases were gathered into one graph (`onnx_switch`), so it has " \
        "no arms to force" if switches(mg) > switches(sg) else ""


def _real(x: str, marked: dict) -> str:
    while x in marked:
        x = marked[x]
    return x


def marked_sites(model: onnx.ModelProto) -> list[str]:
    """The sites of `model`'s markers, in the order first met."""
    out: dict = {}

    def visit(g):
        for n in g.node:
            if (m := _MARK.match(n.name)) is not None:
                out[m.group(1)] = None
            for a in n.attribute:
                if a.type == _GRAPH:
                    visit(a.g)

    visit(model.graph)
    return list(out)


def forcing_model(marked: onnx.ModelProto, sites: list[str]) -> onnx.ModelProto:
    """`marked` with each marker answering from the plan (see the module docstring):
    inputs `PLAN`, `COUNTS` appended, outputs `COUNTS_OUT`, `TAKEN_OUT` appended."""
    m = onnx.ModelProto()
    m.CopyFrom(marked)
    g = m.graph
    t = _Threader(sites)
    t.guards = json.loads(next((p.value for p in m.metadata_props if p.key == GUARDS), "{}"))
    g.input.extend([helper.make_tensor_value_info(PLAN, _INT64, [len(sites), None]),
                    helper.make_tensor_value_info(COUNTS, _INT64, [len(sites)])])
    empty = t.const(np.zeros(0, np.int64))
    counts, taken = t.thread(g, (COUNTS, empty))  # the empty log goes first
    g.node.extend([helper.make_node("Identity", [counts], [COUNTS_OUT]),
                   helper.make_node("Identity", [taken], [TAKEN_OUT])])
    g.output.extend([helper.make_tensor_value_info(COUNTS_OUT, _INT64, [len(sites)]),
                     helper.make_tensor_value_info(TAKEN_OUT, _INT64, [None])])
    return m


class _Threader:
    """Rewrites markers into plan lookups and threads the state through a graph."""

    def __init__(self, sites: list[str]):
        self.index = {s: i for i, s in enumerate(sites)}
        self.n = len(sites)
        self.k = 0
        self.pending: list = []  # nodes made, not yet placed
        self.guards: dict = {}  # marker node -> [(condition, arm)] (`Builder.guard`)

    def name(self, tag: str) -> str:
        self.k += 1
        return f"dycomp_f{self.k}_{tag}"

    def node(self, op: str, inputs: list, **attrs) -> str:
        out = self.name(op.lower())
        self.pending.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray) -> str:
        return self.node("Constant", [], value=numpy_helper.from_array(value))

    def thread(self, g: onnx.GraphProto, state: tuple) -> tuple:
        """Rewrite `g`'s nodes, the state (counts, log) going through them in order;
        the final state."""
        nodes = list(g.node)
        del g.node[:]
        for n in nodes:
            m = _MARK.match(n.name)
            if m is not None:
                state = self.decide(n, self.index[m.group(1)], state,
                                    self.guards.get(n.name, ()))
            elif _holds_marks(n):
                state = self.nested(n, state)
            g.node.extend(self.pending)
            self.pending = []
            if m is None:
                g.node.append(n)
        return state

    def decide(self, mark: onnx.NodeProto, j: int, state: tuple, guards=()) -> tuple:
        """The marker's output: the plan's answer for this occurrence, or the value. A
        marker in speculated arms (`guards`: their conditions) counts and is logged only
        where those arms are the ones taken."""
        counts, taken = state
        x, y = mark.input[0], mark.output[0]
        jj = self.const(np.array(j, np.int64))
        k = self.node("Gather", [counts, jj])
        row = self.node("Gather", [PLAN, jj])
        last = self.node("Sub", [self.node("Size", [row]), self.const(np.array(1, np.int64))])
        told = self.node("Gather", [row, self.node("Min", [k, last])])
        natural = self.node("Cast", [self.node("Reshape", [x, self.const(
            np.zeros(0, np.int64))])], to=_INT64)
        value = self.node("Where", [self.node("Less", [told, self.const(
            np.array(0, np.int64))]), natural, told])
        self.pending.append(helper.make_node(
            "Reshape", [self.node("Cast", [value], to=TensorProto.BOOL), self.node(
                "Shape", [x])], [y], name=self.name("decided")))
        one = np.zeros(self.n, np.int64)
        one[j] = 1
        step = self.const(one)
        if guards:
            read = self.read(guards)
            step = self.node("Mul", [step, read])
        entry = self.node("Add", [self.node("Mul", [natural, self.const(np.array(2, np.int64))]),
                                  self.node("Add", [value, self.const(np.array(4 * j,
                                                                               np.int64))])])
        one_d = self.const(np.array([1], np.int64))
        entry = self.node("Reshape", [entry, one_d])
        if guards:
            entry = self.node("Slice", [entry, self.const(np.array([0], np.int64)),
                                        self.node("Reshape", [read, one_d])])
        return self.node("Add", [counts, step]), self.node("Concat", [taken, entry], axis=0)

    def read(self, guards: list) -> str:
        """1 where every (condition, arm) of `guards` is the arm taken, else 0 (int64)."""
        taken = None
        for cond, arm in guards:
            c = self.node("Reshape", [cond, self.const(np.zeros(0, np.int64))])
            c = c if arm else self.node("Not", [c])
            taken = c if taken is None else self.node("And", [taken, c])
        return self.node("Cast", [taken], to=_INT64)

    def nested(self, n: onnx.NodeProto, state: tuple) -> tuple:
        """An `If` or `Loop` holding markers: the state through its subgraphs."""
        if n.op_type == "If":
            for a in n.attribute:
                if a.type == _GRAPH:
                    self.arm_outputs(a.g, self.thread(a.g, state))
            outs = [self.name("counts"), self.name("taken")]
            n.output.extend(outs)
            return tuple(outs)
        if n.op_type != "Loop":
            raise NotForceable(f"a decision inside a {n.op_type} node")
        (body,) = (a.g for a in n.attribute if a.name == "body")
        carried = len(n.input) - 2
        ins = [self.name("counts"), self.name("taken")]
        body.input.extend([helper.make_tensor_value_info(ins[0], _INT64, [self.n]),
                           helper.make_tensor_value_info(ins[1], _INT64, [None])])
        final = self.thread(body, tuple(ins))
        self.arm_outputs(body, final, at=1 + carried)
        n.input.extend(state)
        outs = [self.name("counts"), self.name("taken")]
        for i, o in enumerate(outs):
            n.output.insert(carried + i, o)
        return tuple(outs)

    def arm_outputs(self, g: onnx.GraphProto, state: tuple, at: int | None = None) -> list:
        """The state as two more outputs of subgraph `g` (at `at`, default: last)."""
        outs = []
        for x, shape in zip(state, ([self.n], [None])):
            out = self.name("out")
            g.node.append(helper.make_node("Identity", [x], [out], name=out))
            outs.append(helper.make_tensor_value_info(out, _INT64, shape))
        at = len(g.output) if at is None else at
        every = list(g.output)
        del g.output[:]
        g.output.extend(every[:at] + outs + every[at:])
        return outs


def _holds_marks(n: onnx.NodeProto) -> bool:
    return any(_MARK.match(m.name) or _holds_marks(m)
               for a in n.attribute if a.type == _GRAPH for m in a.g.node)


class ForcingExecutor:
    """Runs the host program's regions for a forced run: each fused model with marked
    decisions as its forcing copy, answering from the forcer of the run (`_F` of the
    program's globals), the decisions it took replayed into that forcer; other regions
    on `base`."""

    def __init__(self, base, models: dict, ran: dict):
        from dycomp.runtime.onnx_executor import new_session

        self.base, self.ran, self.program = base, ran, None
        self.sites, self.sessions = {}, {}
        for name, model in models.items():
            sites = marked_sites(model)
            if not sites:
                continue
            self.sites[name] = sites
            forcing = forcing_model(model, sites)
            self.sessions[name] = new_session(forcing.SerializeToString(), 1)

    def __call__(self, region: str, *args) -> tuple:
        return self.run_with_path(region, *args)[0]

    def run_with_path(self, region: str, *args) -> tuple[tuple, list[str]]:
        if region not in self.sessions:
            return self.base.run_with_path(region, *args)
        sess, sites = self.sessions[region], self.sites[region]
        forcer = self.program.fn.__globals__["_F"]
        plan, counts = _plan(forcer, sites)
        names = [i.name for i in sess.get_inputs()]
        feed = {i.name: np.asarray(a, _DTYPES.get(i.type)) for i, a in
                zip(sess.get_inputs(), args)}
        feed.update({names[-2]: plan, names[-1]: counts})
        *outs, ids, _, taken = sess.run(None, feed)
        for e in taken.tolist():
            site, natural, value = sites[e // 4], bool(e // 2 % 2), bool(e % 2)
            if forcer(site, natural) != value:
                raise NotForceable(f"the decision at {site} answered unlike the plan")
        return tuple(outs), [self.ran[region][i] for i in ids.tolist()]


_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _plan(forcer, sites: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The plan and counts inputs for one call, from the forcer's plan and counts (sites
    the forcer does not force answer as computed)."""
    counts = np.array([forcer.counts[s] for s in sites], np.int64)
    told = {}
    for (s, k), v in forcer.plan.items():
        if s in sites and (forcer.sites is None or s in forcer.sites):
            j = sites.index(s)
            if k >= counts[j]:
                told[j, k - counts[j]] = int(v)
    width = 1 + max((k for _, k in told), default=-1) + 1
    plan = np.full((len(sites), width), -1, np.int64)
    for (j, k), v in told.items():
        plan[j, k] = v
    return plan, counts
