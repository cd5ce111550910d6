"""Confidence intervals: proportions (Wilson score, as polars expressions) and paired
bootstrap intervals of statistics over points (scipy.stats.bootstrap)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

Z95 = 1.959963984540054  # standard normal quantile at 0.975


def proportion(k: str, n: str, name: str, *, ci: bool = True) -> list[pl.Expr]:
    """``name`` = k/n, plus ``ci_low``/``ci_high`` (Wilson 95%) when ``ci``; null when n = 0.

    Wilson interval: centre (p + z²/2n)/(1 + z²/n), half-width
    z/(1 + z²/n) · sqrt(p(1-p)/n + z²/4n²).
    """
    kk = pl.col(k).cast(pl.Float64)
    nn = pl.col(n).cast(pl.Float64)
    valid = nn > 0
    p = kk / nn
    out = [pl.when(valid).then(p).otherwise(None).alias(name)]
    if ci:
        z2 = Z95 * Z95
        denom = 1.0 + z2 / nn
        centre = (p + z2 / (2.0 * nn)) / denom
        half = Z95 / denom * (p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)).sqrt()
        out += [
            pl.when(valid).then((centre - half).clip(0.0, 1.0)).otherwise(None).alias("ci_low"),
            pl.when(valid).then((centre + half).clip(0.0, 1.0)).otherwise(None).alias("ci_high"),
        ]
    return out


def count(expr: pl.Expr, name: str) -> pl.Expr:
    """Number of true values of a boolean expression, as Int64."""
    return expr.sum().cast(pl.Int64).alias(name)


def paired_bootstrap_ci(
    statistic: Callable[..., np.ndarray], samples: tuple[np.ndarray, ...], *,
    level: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of ``statistic(*samples, axis)``, resampling points
    jointly (paired: the same resample for every array), seeded, so deterministic; (None, None)
    with fewer than two points. ``statistic`` must accept ``axis`` (vectorised)."""
    if len(samples[0]) < 2:
        return None, None
    res = stats.bootstrap(samples, statistic, paired=True, vectorized=True,
                          n_resamples=n_resamples, confidence_level=level, method="percentile",
                          random_state=np.random.default_rng(seed))  # `rng=` needs scipy 1.15
    low, high = res.confidence_interval
    return float(low), float(high)
