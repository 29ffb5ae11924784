"""The control flow the user wrote, visible after fusion (torch-free; display only).

Fusing lowers host branches and loops into ONNX `If` / `Loop` nodes of one subgraph, so
the host program alone no longer shows them. At fusion time each fused subgraph keeps an
*outline* of the statements it replaced: a tree of `if` / `loop` / `call` / `return` /
`break` / `continue` nodes with their source lines. The manifest stores these as its
`fused` table (`{"f1": {"outline": [...], "regions": {"r0": ["m.py:41"]}}}`), checked on
load like every other field and never executed: it is only read to show the control flow
(`control_view`) and to label paths by their decisions (`path_label`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from dycomp.runtime.errors import ArtifactError

_KINDS = {"if": ("then", "orelse"), "loop": ("body",), "call": (), "return": (),
          "break": (), "continue": ()}
_KEYS = {"kind", "line", "source", "region", "then", "orelse", "body"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
MAX_DEPTH = 64


def outline(body: list, depth: int = 0) -> list:
    """The control skeleton of host-program data (`runtime/hostcode.py` schema): its
    branches, loops, region calls and exits, with their source lines. Malformed parts
    are left out (this is for display; the runtime checks what it runs)."""
    out = []
    if not isinstance(body, list) or depth > MAX_DEPTH:
        return out
    for s in body:
        kind = s.get("kind") if isinstance(s, dict) else None
        if kind not in _KINDS and kind != "raise":
            continue
        node = {"kind": "return" if kind == "raise" else kind}
        for key in ("line", "source", "region"):
            if isinstance(s.get(key), str):
                node[key] = s[key]
        for key in _KINDS[node["kind"]]:
            node[key] = outline(s.get(key), depth + 1)
        out.append(node)
    return out


# -- checking a manifest's `fused` table -----------------------------------------------------
def check_fused(fused, subgraphs: dict, where: str) -> None:
    """ArtifactError naming the field unless `fused` is a well-formed table of fused
    subgraphs (names the manifest's `subgraphs` holds) and their outlines."""
    if not isinstance(fused, dict):
        raise ArtifactError(f"{where}: field 'fused' must be an object")
    for name, entry in fused.items():
        at = f"{where}: fused.{name}"
        if name not in subgraphs:
            raise ArtifactError(f"{at}: no such subgraph")
        if not isinstance(entry, dict) or set(entry) - {"outline", "regions"}:
            raise ArtifactError(f"{at}: must be an object with 'outline' and 'regions'")
        regions = entry.get("regions", {})
        if not isinstance(regions, dict) or not all(
                _NAME.match(str(k)) and isinstance(v, list)
                and all(isinstance(x, str) for x in v) for k, v in regions.items()):
            raise ArtifactError(f"{at}.regions: must map region names to source lines")
        _check_nodes(entry.get("outline"), f"{at}.outline", 0)


def _check_nodes(nodes, at: str, depth: int) -> None:
    if not isinstance(nodes, list) or depth > MAX_DEPTH:
        raise ArtifactError(f"{at}: must be a list (nested at most {MAX_DEPTH} deep)")
    for i, node in enumerate(nodes):
        here = f"{at}[{i}]"
        if not isinstance(node, dict) or not isinstance(node.get("kind"), str) \
                or node["kind"] not in _KINDS:
            raise ArtifactError(f"{here}.kind: unknown control-flow node")
        extra = set(node) - _KEYS
        if extra:
            raise ArtifactError(f"{here}: unknown field {sorted(extra)[0]!r}")
        for key in ("line", "source", "region"):
            if key in node and not isinstance(node[key], str):
                raise ArtifactError(f"{here}.{key}: must be a string")
        if node["kind"] == "call" and not _NAME.match(node.get("region", "")):
            raise ArtifactError(f"{here}.region: not a region name")
        for key in _KINDS[node["kind"]]:
            _check_nodes(node.get(key), f"{here}.{key}", depth + 1)


# -- the view --------------------------------------------------------------------------------
@dataclass
class ControlView:
    """Every branch and loop of the source with where it runs, and the region calls."""

    lines: list[str] = field(default_factory=list)
    branches: Counter = field(default_factory=Counter)  # where -> count ("host", "f1")
    loops: Counter = field(default_factory=Counter)
    regions: dict = field(default_factory=dict)  # region on a path -> its source lines
    outline: list = field(default_factory=list)  # fused calls expanded (`pathlabels`)

    def label(self, path: list) -> str:
        """The decisions `path` (region names, as `return_path=True` gives) took."""
        from dycomp.runtime.pathlabels import path_label

        return path_label(self.outline, path)

    def counts(self) -> str:
        """'2 branches (2 fused into f1), 1 loop (host)'."""
        return f"{self.count('branches')}, {self.count('loops')}"

    def count(self, key: str) -> str:
        """'3 branches (2 fused into f1, 1 host)' for key 'branches' or 'loops'."""
        if key == "branches":
            return _count(self.branches, "branch", "es")
        return _count(self.loops, "loop", "s")

    def text(self) -> str:
        return "\n".join([f"control flow of the source: {self.counts()}", *self.lines])


def _count(where: Counter, noun: str, plural: str) -> str:
    n = sum(where.values())
    head = f"{n} {noun}{plural * (n != 1)}"
    if not n:
        return head
    if set(where) == {"host"}:
        return f"{head} (host)"
    parts = [f"{k} host" if w == "host" else f"{k} fused into {w}" for w, k in where.items()]
    return f"{head} ({', '.join(parts)})"


def control_view(host_program: dict, fused: dict, region_lines: dict) -> ControlView:
    """The view of a host program (data) whose calls of fused subgraphs expand into the
    outlines they replaced; `region_lines`: subgraph -> its source lines."""
    from dycomp.runtime.pathlabels import expand

    view = ControlView()
    nodes = outline(host_program.get("body", []))
    _walk(nodes, fused, region_lines, view, "host", 1)
    view.outline = expand(nodes, fused)
    return view


def _walk(nodes: list, fused: dict, region_lines: dict, view: ControlView, where: str,
          depth: int) -> None:
    pad = "  " * depth
    for node in nodes:
        kind, line = node["kind"], node.get("line", "?")
        mark = "host" if where == "host" else f"in {where} as {'If' if kind == 'if' else 'Loop'}"
        if kind == "call" and node.get("region") in fused:
            name = node["region"]
            view.lines.append(f"{pad}subgraph {name} ({line}): fused control flow")
            entry = fused[name]
            _walk(entry.get("outline", []), fused, {**region_lines, **entry.get("regions", {})},
                  view, name, depth + 1)
        elif kind == "call":
            lines = region_lines.get(node.get("region"), [])
            view.regions[node["region"]] = lines
            view.lines.append(f"{pad}region {node['region']}  {_short(lines) or line}")
        elif kind == "if":
            view.branches[where] += 1
            view.lines.append(f"{pad}if {node.get('source', '')}  [{line}]  {mark}")
            _walk(node["then"], fused, region_lines, view, where, depth + 1)
            if node["orelse"]:
                view.lines.append(f"{pad}else")
                _walk(node["orelse"], fused, region_lines, view, where, depth + 1)
        elif kind == "loop":
            view.loops[where] += 1
            view.lines.append(f"{pad}loop {node.get('source', '')}  [{line}]  {mark}")
            _walk(node["body"], fused, region_lines, view, where, depth + 1)
        else:
            view.lines.append(f"{pad}{kind}" + (f"  [{line}]" if "line" in node else ""))


def _short(lines: list) -> str:
    return ", ".join(lines[:2]) + (" ..." if len(lines) > 2 else "")


def manifest_view(manifest: dict) -> ControlView:
    """The control view of a (checked) manifest: its host program and `fused` table."""
    subs = manifest.get("subgraphs", {})
    return control_view(manifest.get("host_program", {}), manifest.get("fused", {}),
                        {n: s.get("lines", []) for n, s in subs.items()})


def graph_view(host_program: dict, regions: dict) -> ControlView:
    """The control view of a compiled program: `regions` name -> Region (`.fused`,
    `.lines`)."""
    fused = {n: r.fused for n, r in regions.items() if getattr(r, "fused", None)}
    return control_view(host_program, fused, {n: list(r.lines) for n, r in regions.items()})
