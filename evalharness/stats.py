"""Statistics on paired per-sample correctness, all from scipy (exact tests, Wilson intervals, bootstrap).

scipy.stats is imported on first use (`_stats`), not with this module: it takes seconds (3.8 of the command line's
4.4 s of imports on 2 CPU cores), and commands that never score (`run-job`, `plan`, `faults`) import this module
through the command line."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _stats():
    from scipy import stats

    return stats


def wilson_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials; None when n is 0."""
    if n == 0:
        return None
    ci = _stats().binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Paired:
    """Paired correctness of `a` (reference) and `b` on the same samples."""

    n: int
    both: int
    only_a: int  # a right, b wrong: b lost it
    only_b: int  # a wrong, b right: b gained it
    neither: int

    @property
    def delta(self) -> float:
        """Accuracy of b minus accuracy of a (NaN when there are no pairs)."""
        return (self.only_b - self.only_a) / self.n if self.n else math.nan


def paired_counts(a: list[bool], b: list[bool]) -> Paired:
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    both = sum(x and y for x, y in zip(a, b))
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    return Paired(len(a), both, only_a, only_b, len(a) - both - only_a - only_b)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: a binomial test of the discordant pairs against p = 1/2 (1.0 with none)."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    return float(_stats().binomtest(min(only_a, only_b), discordant, 0.5).pvalue)


def paired_bootstrap_ci(a: list[bool], b: list[bool], confidence: float = 0.95, n_resamples: int = 10_000,
                        seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap CI of accuracy(b) - accuracy(a), resampling pairs. None with fewer than 2 pairs or no
    variation (the interval is then the point itself)."""
    if len(a) != len(b):
        raise ValueError("paired samples differ in length")
    if len(a) < 2:
        return None
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.all(y - x == (y - x)[0]):
        d = float((y - x)[0])
        return d, d
    res = _stats().bootstrap((x, y), lambda p, q, axis=-1: q.mean(axis=axis) - p.mean(axis=axis), paired=True,
                          vectorized=True, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def two_proportion_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test for two independent proportions (unpaired samples); 1.0 when either n is 0."""
    if n1 == 0 or n2 == 0:
        return 1.0
    return float(_stats().fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)
