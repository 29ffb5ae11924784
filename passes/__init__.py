"""dycomp.passes: transformations of the DynGraph (one pass per file)."""

from dycomp.passes.base import Pass, PassResult, run_passes
from dycomp.passes.dead_values import DeadValueElimination
from dycomp.passes.dedup_regions import DedupRegions
from dycomp.passes.fuse_decisions import FuseAcrossDecisions
from dycomp.passes.gate_to_branch import GateToBranch
from dycomp.passes.hoist_invariants import HoistLoopInvariants
from dycomp.passes.keep_decisions import DecisionRecorder, KeepDecisions, KeepReport
from dycomp.passes.merge_regions import MergeAdjacentRegions
from dycomp.passes.prune import Prune, PruneReport
from dycomp.passes.quantize import Quantize, QuantReport

# The dynamic-aware optimizations, by name, in the order they run.
DYNAMIC_PASSES = {p.name: p for p in (GateToBranch, HoistLoopInvariants, FuseAcrossDecisions)}


def cleanup_passes() -> list[Pass]:
    """The passes that run on every compile."""
    return [DeadValueElimination(), MergeAdjacentRegions(), DeadValueElimination(),
            DedupRegions()]


def dynamic_passes(chosen=None, if_nodes: bool = False) -> list[Pass]:
    """The dynamic-aware optimizations (all, or those named or given as configured
    instances). They run on cleaned-up regions (a gate and the block it gates in one
    region) and leave pieces that the cleanup passes merge again. `if_nodes`: the
    backend lowers tensor-only branches into `If` nodes (ONNX), which changes what
    speculation saves."""
    given = {p.name: p for p in chosen or () if isinstance(p, Pass)}
    names = set(DYNAMIC_PASSES) if chosen is None else {getattr(p, "name", p) for p in chosen}
    run = [given.get(n) or (FuseAcrossDecisions(if_nodes) if n == FuseAcrossDecisions.name
                            else cls()) for n, cls in DYNAMIC_PASSES.items() if n in names]
    return cleanup_passes() + run + cleanup_passes() if run else cleanup_passes()


__all__ = ["DYNAMIC_PASSES", "DeadValueElimination", "DecisionRecorder", "DedupRegions",
           "FuseAcrossDecisions", "GateToBranch", "HoistLoopInvariants", "KeepDecisions",
           "KeepReport", "MergeAdjacentRegions", "Pass",
           "PassResult", "Prune", "PruneReport", "QuantReport", "Quantize", "cleanup_passes",
           "dynamic_passes", "run_passes"]
