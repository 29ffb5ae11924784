"""dycomp.passes: transformations of the DynGraph (one pass per file)."""

from dycomp.passes.base import Pass, PassResult, run_passes
from dycomp.passes.dead_values import DeadValueElimination
from dycomp.passes.dedup_regions import DedupRegions
from dycomp.passes.merge_regions import MergeAdjacentRegions
from dycomp.passes.prune import Prune, PruneReport
from dycomp.passes.quantize import Quantize, QuantReport


def cleanup_passes() -> list[Pass]:
    """The passes that run on every compile."""
    return [DeadValueElimination(), MergeAdjacentRegions(), DeadValueElimination(),
            DedupRegions()]


__all__ = ["DeadValueElimination", "DedupRegions", "MergeAdjacentRegions", "Pass",
           "PassResult", "Prune", "PruneReport", "QuantReport", "Quantize", "cleanup_passes",
           "run_passes"]
