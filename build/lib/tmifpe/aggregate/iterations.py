"""Robust accuracy against the iteration inside a run, from ``first_success_iter``."""

from __future__ import annotations

import polars as pl

from tmifpe.aggregate.keys import RUN_KEYS
from tmifpe.aggregate.stats import count, proportion


def robust_vs_iterations(cells: pl.DataFrame) -> pl.DataFrame:
    """Robust accuracy at iteration c of each run, as a step function.

    An example is robust at c when it is clean-correct and ``first_success_iter`` is -1 or > c
    (the attack's own verdict, see docs/results-schema.md). Rows exist at c = 0, at c = budget
    and at every iteration where some example was first broken; the value holds until the next
    row. Columns: RUN_KEYS, iteration (i32), n, n_robust, robust_acc.
    """
    fsi = pl.col("first_success_iter")
    bad = cells.filter((fsi < -1) | (fsi > pl.col("budget")))
    if bad.height:
        row = bad.row(0, named=True)
        raise ValueError(
            f"first_success_iter {row['first_success_iter']} outside [-1, {row['budget']}] "
            f"for model {row['model']!r}, loss {row['loss']!r}, example {row['example']}"
        )
    base = cells.group_by(RUN_KEYS).agg(
        pl.len().cast(pl.Int64).alias("n"), count(pl.col("clean_correct"), "n_clean_correct")
    )
    events = (
        cells.filter(pl.col("clean_correct") & (fsi >= 0))
        .group_by(*RUN_KEYS, fsi.alias("iteration"))
        .agg(pl.len().cast(pl.Int64).alias("n_new"))
    )
    ends = base.select(
        *RUN_KEYS, pl.concat_list(pl.lit(0, dtype=pl.Int32), pl.col("budget")).alias("iteration")
    ).explode("iteration")
    steps = (
        pl.concat([ends, events.select(*RUN_KEYS, "iteration")])
        .unique()
        .join(events, on=[*RUN_KEYS, "iteration"], how="left")
        .with_columns(pl.col("n_new").fill_null(0))
        .sort([*RUN_KEYS, "iteration"])
        .with_columns(pl.col("n_new").cum_sum().over(RUN_KEYS).alias("n_broken"))
    )
    return (
        steps.join(base, on=RUN_KEYS, how="left")
        .with_columns((pl.col("n_clean_correct") - pl.col("n_broken")).alias("n_robust"))
        .with_columns(proportion("n_robust", "n", "robust_acc", ci=False))
        .select(*RUN_KEYS, "iteration", "n", "n_robust", "robust_acc")
        .sort([*RUN_KEYS, "iteration"])
    )
