"""Proportions with a Wilson score 95% confidence interval, as polars expressions."""

from __future__ import annotations

import polars as pl

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
