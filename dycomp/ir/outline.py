"""The control outline of host statements (`runtime/controlflow.py` schema): what a fused
subgraph replaced, kept for display. Built from the statements themselves, so that no
expression needs to be representable as host-program data."""

from __future__ import annotations

from dycomp.ir.program import Break, CallRegion, Continue, If, Loop, Return


def outline_of(body: list) -> list[dict]:
    """Branches, loops, region calls and exits of `body`, with source lines."""
    out = []
    for s in body:
        if isinstance(s, CallRegion):
            node = {"kind": "call", "region": s.region}
        elif isinstance(s, If):
            node = {"kind": "if", "source": s.source, "then": outline_of(s.then),
                    "orelse": outline_of(s.orelse)}
        elif isinstance(s, Loop):
            node = {"kind": "loop", "source": s.source, "body": outline_of(s.body)}
        elif isinstance(s, (Break, Continue, Return)):  # Raise is a Return
            node = {"kind": "return" if isinstance(s, Return) else type(s).__name__.lower()}
        else:
            continue
        if s.line:
            node["line"] = s.line
        out.append(node)
    return out
