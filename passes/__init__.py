"""dycomp.passes: transformations of the DynGraph (one pass per file)."""

from dycomp.passes.base import Pass, PassResult, run_passes
from dycomp.passes.dead_values import DeadValueElimination
from dycomp.passes.dedup_regions import DedupRegions
from dycomp.passes.fuse_decisions import FuseAcrossDecisions
from dycomp.passes.gate_to_branch import GateToBranch
from dycomp.passes.hoist_invariants import HoistLoopInvariants
from dycomp.passes.merge_regions import MergeAdjacentRegions
from dycomp.passes.prune import Prune, PruneReport
from dycomp.passes.quantize import Quantize, QuantReport

# The dynamic-aware optimizations, by name, in the order they run.
DYNAMIC_PASSES = {p.name: p for p in (GateToBranch, HoistLoopInvariants, FuseAcrossDecisions)}


def cleanup_passes() -> list[Pass]:
    """The passes that run on every compile."""
    return [DeadValueElimination(), MergeAdjacentRegions(), DeadValueElimination(),
            DedupRegions()]


def dynamic_passes(names=None, if_nodes: bool = False) -> list[Pass]:
    """The dynamic-aware optimizations (all, or those named). They run on cleaned-up
    regions (a gate and the block it gates in one region) and leave pieces that the
    cleanup passes merge again. `if_nodes`: the backend lowers tensor-only branches
    into `If` nodes (ONNX), which changes what speculation saves."""
    names = list(DYNAMIC_PASSES) if names is None else list(names)
    chosen = [FuseAcrossDecisions(if_nodes) if n == FuseAcrossDecisions.name
              else DYNAMIC_PASSES[n]() for n in DYNAMIC_PASSES if n in names]
    return cleanup_passes() + chosen + cleanup_passes() if chosen else cleanup_passes()


__all__ = ["DYNAMIC_PASSES", "DeadValueElimination", "DedupRegions", "FuseAcrossDecisions",
           "GateToBranch", "HoistLoopInvariants", "MergeAdjacentRegions", "Pass",
           "PassResult", "Prune", "PruneReport", "QuantReport", "Quantize", "cleanup_passes",
           "dynamic_passes", "run_passes"]
