"""Batching classes: may a compiled model serve a batch of requests, and how exactly?

`classify(graph)` runs on the host program and its FX regions before lowering (fused ONNX
`If` / `Loop` hide both). With the inputs batched along dim 0:

- a **region** is row-wise when each output row depends on the same input row alone
  (`dycomp/batching_rows.py`);
- a **decision** (`if`, a loop's iterable, a switch case) is *per-sample* when it reads no
  input data (a constant trip count), and *batch-coupled* when it reads a scalar made from
  the data (`p.max()`, `.item()`, `bool(t)`): eager code run on a batch would decide once
  for all its samples.

The model's class: `per-sample` (row-wise regions and no value read out of the data:
concatenating requests is exact), `path-split` (row-wise regions but coupled decisions:
exact by splitting the batch at each decision, `dycomp.runtime.batching`), `unbatchable`
(a region mixes rows: one request at a time). Stored in the manifest as `batching`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from dycomp.batching_rows import CONST, REDUCED, ROWS, NotRowwise, State, region_states
from dycomp.ir.program import Assign, CallRegion, HostOp, If, Loop, expr_vars, walk

CLASSES = ("per-sample", "path-split", "unbatchable")
log = logging.getLogger(__name__)


@dataclass
class Batching:
    """The batching class of a compiled model, with its reasons (JSON: `to_json`)."""

    kind: str
    reasons: list = field(default_factory=list)
    decisions: list = field(default_factory=list)  # {line, source, kind, coupled, reason}
    regions: dict = field(default_factory=dict)  # region -> {rowwise, reason, scalar}
    subgraphs: dict = field(default_factory=dict)  # artifact subgraph -> {batched, reason}
    # not saved: per region, the distinct input states of its calls (batching_variant.py);
    # whether rows variants are wanted ("fixed" or "dynamic" input shapes; built when the
    # model is saved: only an artifact runs them) and their files (path -> ONNX bytes)
    region_inputs: dict = field(default_factory=dict, repr=False)
    variants: str = field(default="", repr=False)
    files: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"class": self.kind, "reasons": list(self.reasons),
                "decisions": list(self.decisions), "regions": dict(self.regions),
                "subgraphs": dict(self.subgraphs)}

    @classmethod
    def from_json(cls, data: dict) -> Batching:
        return cls(data["class"], list(data.get("reasons", [])), list(data.get("decisions", [])),
                   dict(data.get("regions", {})), dict(data.get("subgraphs", {})))

    def __str__(self) -> str:
        return describe(self.to_json())


def describe(data: dict) -> str:
    """A readable summary of manifest `batching` data (also used by `dycomp inspect`)."""
    from dycomp.runtime.batching import describe as runtime_describe

    return runtime_describe(data)


def classify(graph) -> Batching:
    """The batching class of `graph` (a DynGraph before lowering)."""
    analysis = _HostAnalysis(graph)
    analysis.run()
    bad = {n: r["reason"] for n, r in analysis.regions.items() if not r["rowwise"]}
    coupled = [d for d in analysis.decisions if d["coupled"]]
    if bad:
        kind, reasons = "unbatchable", [f"region {n}: {why}" for n, why in bad.items()]
    elif coupled or analysis.reads:
        kind = "path-split"
        reasons = [d["reason"] for d in coupled] or [
            f"a value read out of the data: {analysis.reads[0]}"]
    else:
        kind, reasons = "per-sample", ["every region is row-wise and no decision reads data"]
    return Batching(kind, _unique(reasons), analysis.decisions, analysis.regions,
                    region_inputs=analysis.inputs)


def classify_batching(graph) -> Batching:
    """`classify`, or the safe class `unbatchable` (logged) if the analysis itself fails:
    the class only ever allows batching, so a failure must not stop a compile."""
    try:
        return classify(graph)
    except Exception as e:  # noqa: BLE001 - a bug here must cost batching, not the compile
        log.warning("batching analysis failed (%s: %s); the model is served one request at "
                    "a time", type(e).__name__, e)
        return Batching("unbatchable", [f"the batching analysis failed: {e}"])


def _unique(xs: list) -> list:
    return list(dict.fromkeys(xs))


def for_artifact(b: Batching, graph) -> Batching:
    """`b` with `subgraphs`: for each subgraph of the lowered `graph`, whether one call
    may take a whole group of samples (row-wise, and no coupled decision fused into it)."""
    coupled_lines = {(d["line"], d["source"]) for d in b.decisions if d["coupled"]}
    for name, region in graph.regions.items():
        if region.fused:
            parts = list(region.fused.get("regions", {}))
            inside = [(n.get("line"), n.get("source", "")) for n in _outline(
                region.fused.get("outline", []))]
            hit = next((ln for ln, src in inside if (ln, src) in coupled_lines), None)
            for d in b.decisions:
                if (d["line"], d["source"]) in inside:
                    d["where"] = name
            if hit is not None:
                b.subgraphs[name] = {"batched": False, "reason": f"decision at {hit} is "
                                     "fused into it: a batch would take one path"}
                continue
        else:
            parts = [name]
        reasons = [b.regions[p]["reason"] for p in parts
                   if p in b.regions and not b.regions[p]["rowwise"]]
        reasons += [f"region {p} outputs the per-sample scalar made at {b.regions[p]['scalar']}"
                    ": a batched call would reduce over the batch" for p in parts
                    if b.regions.get(p, {}).get("scalar")]
        unknown = [p for p in parts if p not in b.regions]
        if unknown:
            reasons.append(f"region {unknown[0]} was made after classification")
        b.subgraphs[name] = {"batched": not reasons, "reason": "; ".join(reasons)}
    return b


def _outline(nodes: list):
    for n in nodes:
        if n.get("kind") in ("if", "loop"):
            yield n
        for key in ("then", "orelse", "body"):
            yield from _outline(n.get(key, []))


class _HostAnalysis:
    """States of host variables (`batching_rows.State`), to a fixed point: loops carry
    values around, and a value assigned under a coupled decision differs by sample."""

    def __init__(self, graph):
        self.graph = graph
        self.states: dict = {p: State(ROWS) for p in graph.params}
        self.regions: dict[str, dict] = {}
        self.decisions: list[dict] = []
        self.reads: list[str] = []
        self.lines: dict = {}  # host variable -> the line of the op that made it
        self.inputs: dict[str, set] = {}  # region -> the input states of its calls

    def run(self) -> None:
        for _ in range(8):
            before = dict(self.states)
            self.decisions, self.reads, self.inputs = [], [], {}
            self.block(self.graph.body, None)
            if before == self.states:
                break

    def state(self, v) -> State:
        return self.states.get(v, State(CONST))

    def expr_state(self, e, line: str) -> State:
        vs = [self.state(v) for v in expr_vars(e)]
        if all(s.kind == CONST for s in vs):
            return State(CONST)
        if _is_container(e):
            rows = next((s for s in vs if s.kind == REDUCED), None)
            return rows or State(ROWS)
        origin = next((s.origin for s in vs if s.kind == REDUCED), f"{line}: read on the host")
        return State(REDUCED, origin, host=True)

    def define(self, v, s: State, ctx: State | None) -> None:
        if ctx is not None and s.kind == CONST:
            s = ctx
        old = self.states.get(v)
        if old is None or _rank(s) > _rank(old):
            self.states[v] = s

    def block(self, body: list, ctx: State | None) -> None:  # noqa: C901 - per statement
        for s in body:
            line = s.line or "?"
            if isinstance(s, CallRegion):
                self.call(s, ctx)
            elif isinstance(s, HostOp):
                if s.out is not None and s.line:
                    self.lines[s.out] = s.line
                st = self.expr_state(s.expr, line)
                if st.kind == REDUCED and st.origin.startswith(line):
                    self.reads.append(st.origin)
                if s.out is not None:
                    self.define(s.out, st, ctx)
            elif isinstance(s, Assign):
                for d, src in zip(s.dsts, s.srcs):
                    self.define(d, self.expr_state(src, line), ctx)
            elif isinstance(s, If):
                line = s.line or self.lines.get(s.cond, line)  # a switch case: its index
                arm_ctx = self.decision(s, "if", self.state(s.cond), line) or ctx
                self.block(s.then, arm_ctx)
                self.block(s.orelse, arm_ctx)
            elif isinstance(s, Loop):
                self.loop(s, ctx, line)

    def loop(self, s: Loop, ctx, line: str) -> None:
        body_ctx = ctx
        if s.iter_expr is not None:
            body_ctx = self.decision(s, "for", self.expr_state(s.iter_expr, line), line) or ctx
            if s.target is not None:
                self.define(s.target, State(CONST), body_ctx)
        coupled = next((self.state(i.cond) for i in walk(s.body) if isinstance(i, If)
                        and self.state(i.cond).kind != CONST), None)
        if coupled is not None and body_ctx is None:
            body_ctx = State(REDUCED, coupled.origin, host=True)
        self.block(s.body, body_ctx)

    def decision(self, s, kind: str, st: State, line: str) -> State | None:
        """Record the decision; the state its arms run under if it is coupled."""
        coupled = st.kind != CONST
        reason = (f"{line}: `{s.source or kind}` reads "
                  f"{st.origin if st.kind == REDUCED else 'a batch tensor'}") if coupled else ""
        self.decisions.append({"line": line, "source": s.source, "kind": kind,
                               "coupled": coupled, "reason": reason, "where": "host"})
        return State(REDUCED, st.origin or line, host=True) if coupled else None

    def call(self, s: CallRegion, ctx) -> None:
        region = self.graph.regions[s.region]
        ins = [self._region_input(self.state(a)) for a in s.args]
        self.inputs.setdefault(s.region, set()).add(tuple(ins))
        info = self.regions.setdefault(s.region, {"rowwise": True, "reason": "", "scalar": ""})
        try:
            outs = region_states(region.gm, ins) if region.gm is not None else None
        except NotRowwise as e:
            info.update(rowwise=False, reason=str(e))
            outs = None
        if outs is None:
            outs = [State(REDUCED, f"{s.line}: region {s.region}")] * len(s.outs)
            if region.gm is None and info["rowwise"]:
                info.update(rowwise=False, reason="an ONNX-only region is not analysed")
        made = next((st.origin for st in outs if st.kind == REDUCED and not st.host), "")
        if made and info["rowwise"] and not info["scalar"]:
            info["scalar"] = made
        for v, st in zip(s.outs, outs):
            self.define(v, st, ctx)

    @staticmethod
    def _region_input(s: State) -> State:
        """A Python scalar from the host is a parameter of the call: the executor groups
        samples by its value. A reduced tensor stays reduced."""
        return State(CONST) if s.host else s


def _is_container(e) -> bool:
    return type(e).__name__ in ("Var", "tuple", "list", "dict")


def _rank(s: State) -> int:
    return {CONST: 0, ROWS: 1, REDUCED: 2}[s.kind]
