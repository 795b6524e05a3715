"""Interval estimates and the seed stride shared by the benchmarks."""

from __future__ import annotations

import math

Z95 = 1.959964
"""The 97.5% quantile of the standard normal: two-sided 95% intervals."""

SEED_STRIDE = 1_000_003
"""A run's seed S moves every sampling draw of the efficacy benchmark (standard scenarios and attack) by
``S * SEED_STRIDE`` (seed 0 keeps the plain offsets)."""


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    denominator = 1 + Z95 ** 2 / total
    centre = (p + Z95 ** 2 / (2 * total)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95 ** 2 / (4 * total ** 2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))
