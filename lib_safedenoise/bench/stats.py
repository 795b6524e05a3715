"""Interval estimates shared by the benchmarks."""

from __future__ import annotations

import math

Z95 = 1.959964
"""The 97.5% quantile of the standard normal: two-sided 95% intervals."""


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    denominator = 1 + Z95 ** 2 / total
    centre = (p + Z95 ** 2 / (2 * total)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95 ** 2 / (4 * total ** 2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))
