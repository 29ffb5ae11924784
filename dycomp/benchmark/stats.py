"""Latency statistics: median, p90, p99 and a bootstrap confidence interval."""

from __future__ import annotations

import numpy as np


def summarize(times_ms: list[float], resamples: int = 1000, seed: int = 0) -> dict:
    """median/p90/p99 (ms) and the 95 % bootstrap interval of the median."""
    t = np.asarray(times_ms, dtype=float)
    if t.size == 0:
        return {}
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(t, size=(resamples, t.size), replace=True), axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90)),
            "p99": float(np.percentile(t, 99)), "ci_low": float(lo), "ci_high": float(hi),
            "n": int(t.size)}
