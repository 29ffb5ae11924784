"""`dycomp.compare`: does an optimized model still decide and answer like the reference?

Paths are the regions the host program ran; a subgraph that fuses branches and loops
into ONNX `If` / `Loop` nodes reports the regions it ran inside, so models of the same
network compiled with the same options share region names and compare decision by
decision. A fused subgraph that cannot report them (built by hand, say) is flagged
(`Comparison.fused`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from dycomp.check import tensor_leaves


@dataclass
class Comparison:
    n: int
    path_agreement: float  # fraction of inputs on which both took the same path
    output_max_abs_diff: float  # over inputs where both took the same path
    output_agreement: float  # argmax agreement of the first output (classifiers)
    per_path: list[dict] = field(default_factory=list)  # one row per reference path
    fused: bool = False  # some decisions ran inside ONNX subgraphs that hide them

    def table(self) -> str:
        rows = [f"{'path':<40} {'inputs':>6} {'same path':>9} {'argmax agree':>12} "
                f"{'max |diff|':>10}"]
        for r in self.per_path:
            rows.append(f"{r['path'][:40]:<40} {r['inputs']:>6} {r['same_path']:>9.1%} "
                        f"{r['output_agreement']:>12.1%} {r['max_abs_diff']:>10.2e}")
        note = ("\n(decisions fused into ONNX subgraphs that do not report their path are "
                "not compared: compile with fuse_branches=False)") if self.fused else ""
        return "\n".join(rows) + (
            f"\nall {self.n} inputs: same path {self.path_agreement:.1%}, argmax agreement "
            f"{self.output_agreement:.1%}, max |diff| {self.output_max_abs_diff:.3g}{note}")


def compare(reference, candidate, inputs) -> Comparison:
    """Run both on every input tuple; compare paths and outputs.

    `reference`/`candidate`: `CompiledModel`s, or `nn.Module`s, compiled here to observe
    their paths: as the other side was compiled (backend, branch fusion and dynamic
    optimizations, without its passes), so that both have the same regions; on the torch
    backend if both are modules. `inputs`: a list of input tuples."""
    from dycomp.api import CompiledModel

    inputs = [x if isinstance(x, tuple) else (x,) for x in inputs]
    if not inputs:
        raise ValueError("compare() needs at least one input tuple")
    like = next((m.options for m in (reference, candidate)
                 if isinstance(m, CompiledModel) and m.options), {"backend": "torch"})
    ref, cand = (_compiled(m, inputs[0], like) for m in (reference, candidate))
    rows: dict[tuple, list] = {}
    for x in inputs:
        (ya, pa), (yb, pb) = ref.run(*x, return_path=True), cand.run(*x, return_path=True)
        a, b = (next(iter(tensor_leaves(y)), np.zeros(0)) for y in (ya, yb))
        same = pa == pb
        diff = float(np.abs(a - b).max()) if same and a.shape == b.shape else float("nan")
        agree = a.size > 0 and a.shape == b.shape and int(a.argmax()) == int(b.argmax())
        rows.setdefault(pa, []).append((same, agree, diff))
    return _summarize(rows, len(inputs), _fused(ref) or _fused(cand))


def _summarize(rows: dict, n: int, fused: bool) -> Comparison:
    per_path, counts = [], Counter()
    diffs = []
    for path, items in sorted(rows.items(), key=lambda kv: -len(kv[1])):
        same = [s for s, _, _ in items]
        d = [x for s, _, x in items if s]
        counts["same"] += sum(same)
        counts["agree"] += sum(a for _, a, _ in items)
        diffs += d
        per_path.append({"path": " > ".join(path), "inputs": len(items),
                         "same_path": sum(same) / len(items),
                         "output_agreement": sum(a for _, a, _ in items) / len(items),
                         "max_abs_diff": max(d) if d else float("nan")})
    return Comparison(n, counts["same"] / n, max(diffs) if diffs else float("nan"),
                      counts["agree"] / n, per_path, fused)


def _compiled(model, example, options: dict):
    from dycomp.api import CompiledModel, compile

    if isinstance(model, CompiledModel):
        return model
    if isinstance(model, nn.Module) or callable(model):
        return compile(model, example, check=False, **options)
    raise TypeError(f"compare() takes CompiledModels or nn.Modules, not "
                    f"{type(model).__name__}")


def _fused(cm) -> bool:
    return cm.graph is not None and any(r.gm is None and r.traced is None
                                        for r in cm.graph.regions.values())
