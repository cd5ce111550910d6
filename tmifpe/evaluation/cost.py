"""Cost of an attack per example, in forward + backward passes (the aggregate tables' and
``summary.json``'s unit)."""

from __future__ import annotations

import polars as pl


def attack_passes() -> pl.Expr:
    """PGD attack cell / ``tmifpe.evaluate`` row: ``n_forward + n_backward``."""
    return pl.col("n_forward") + pl.col("n_backward")


def autoattack_passes() -> pl.Expr:
    """AutoAttack row: ``2·n_grad + n_queries`` (one gradient evaluation = a forward and a
    backward pass; a query = one forward pass)."""
    return 2 * pl.col("n_grad") + pl.col("n_queries")
