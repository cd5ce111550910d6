"""AutoAttack on the same points: its own summary, attack cost, and the pointwise comparison.

Costs are counted in model passes, the same way for both: an attack run costs
mean(n_forward + n_backward) per point; AutoAttack costs mean(2·n_grad + n_queries) per point
(one gradient evaluation is a forward and a backward pass; a query is a forward pass). Both
components are kept in the tables.
"""

from __future__ import annotations

import polars as pl

from tmifpe.aggregate.keys import MODEL_KEYS, RUN_KEYS, robust, robust64
from tmifpe.aggregate.stats import count, proportion
from tmifpe.evaluation.cost import autoattack_passes

AA_STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")


def autoattack_summary(aa: pl.DataFrame, aa_timing: pl.DataFrame) -> pl.DataFrame:
    """Per model: clean and robust accuracy under AutoAttack, first-breaking stage, cost.

    Columns: suite, dataset, model, n, n_clean_correct, clean_acc, n_robust, robust_acc, ci_low,
    ci_high, n_robust_fp64, robust_acc_fp64, n_broken_<stage> (apgd_ce, apgd_t, fab_t, square),
    grad_per_point, queries_per_point, cost_per_point, wall_time_per_point_s (null without a
    timing file).
    """
    stages = [
        count(pl.col("broken_by") == stage, "n_broken_" + stage.replace("-", "_"))
        for stage in AA_STAGES
    ]
    summary = (
        aa.group_by(MODEL_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            count(pl.col("clean_correct"), "n_clean_correct"),
            count(robust(), "n_robust"),
            count(robust64(), "n_robust_fp64"),
            *stages,
            pl.col("n_grad").mean().alias("grad_per_point"),
            pl.col("n_queries").mean().alias("queries_per_point"),
            autoattack_passes().mean().alias("cost_per_point"),
        )
        .with_columns(proportion("n_clean_correct", "n", "clean_acc", ci=False))
        .with_columns(proportion("n_robust", "n", "robust_acc"))
        .with_columns(proportion("n_robust_fp64", "n", "robust_acc_fp64", ci=False))
        .join(aa_timing, on=MODEL_KEYS, how="left", validate="m:1")
        .with_columns((pl.col("wall_time_s") / pl.col("n")).alias("wall_time_per_point_s"))
    )
    stage_cols = [e.meta.output_name() for e in stages]
    return summary.select(
        *MODEL_KEYS, "n", "n_clean_correct", "clean_acc", "n_robust", "robust_acc", "ci_low",
        "ci_high", "n_robust_fp64", "robust_acc_fp64", *stage_cols, "grad_per_point",
        "queries_per_point", "cost_per_point", "wall_time_per_point_s",
    ).sort(MODEL_KEYS)


def attack_cost(cells: pl.DataFrame, cell_timing: pl.DataFrame) -> pl.DataFrame:
    """Per run: forward_per_point, backward_per_point, cost_per_point (their sum) and
    wall_time_per_point_s from the timing file (null without one)."""
    return (
        cells.group_by(RUN_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("n_forward").mean().alias("forward_per_point"),
            pl.col("n_backward").mean().alias("backward_per_point"),
            (pl.col("n_forward") + pl.col("n_backward")).mean().alias("cost_per_point"),
        )
        .join(cell_timing, on=RUN_KEYS, how="left", validate="m:1")  # one timing row per run
        .sort(RUN_KEYS)
    )


def vs_autoattack(
    cells: pl.DataFrame, aa: pl.DataFrame, cost: pl.DataFrame, aa_summary: pl.DataFrame
) -> pl.DataFrame:
    """Each run against AutoAttack on the points both evaluated (fp32 verdicts).

    Columns: RUN_KEYS, n_common, robust_acc, aa_robust_acc, gap_pp (100 × (attack − AA)),
    n_broken_attack_only (broken by the attack, robust under AA), n_broken_aa_only (the reverse),
    n_both_robust, n_both_nonrobust, n_clean_disagree, cost_per_point, aa_cost_per_point,
    cost_ratio, wall_time_per_point_s, aa_wall_time_per_point_s, wall_time_ratio.
    """
    aa_side = aa.select(
        *MODEL_KEYS, "example", robust().alias("aa_robust"), pl.col("clean_correct").alias("aa_cc")
    )
    joined = cells.select(*RUN_KEYS, "example", "clean_correct", robust().alias("r")).join(
        aa_side, on=[*MODEL_KEYS, "example"], how="inner"
    )
    r, a = pl.col("r"), pl.col("aa_robust")
    points = (
        joined.group_by(RUN_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("n_common"),
            count(r, "n_r"),
            count(a, "n_a"),
            count(~r & a, "n_broken_attack_only"),
            count(r & ~a, "n_broken_aa_only"),
            count(r & a, "n_both_robust"),
            count(~r & ~a, "n_both_nonrobust"),
            count(pl.col("clean_correct") != pl.col("aa_cc"), "n_clean_disagree"),
        )
        .with_columns(proportion("n_r", "n_common", "robust_acc", ci=False))
        .with_columns(proportion("n_a", "n_common", "aa_robust_acc", ci=False))
        .with_columns(((pl.col("robust_acc") - pl.col("aa_robust_acc")) * 100.0).alias("gap_pp"))
    )
    aa_cost = aa_summary.select(
        *MODEL_KEYS,
        pl.col("cost_per_point").alias("aa_cost_per_point"),
        pl.col("wall_time_per_point_s").alias("aa_wall_time_per_point_s"),
    )
    return (
        points.join(cost.select(*RUN_KEYS, "cost_per_point", "wall_time_per_point_s"),
                    on=RUN_KEYS, how="left", validate="m:1")
        .join(aa_cost, on=MODEL_KEYS, how="left", validate="m:1")
        .with_columns(
            _ratio("cost_per_point", "aa_cost_per_point").alias("cost_ratio"),
            _ratio("wall_time_per_point_s", "aa_wall_time_per_point_s").alias("wall_time_ratio"),
        )
        .select(
            *RUN_KEYS, "n_common", "robust_acc", "aa_robust_acc", "gap_pp",
            "n_broken_attack_only", "n_broken_aa_only", "n_both_robust", "n_both_nonrobust",
            "n_clean_disagree", "cost_per_point", "aa_cost_per_point", "cost_ratio",
            "wall_time_per_point_s", "aa_wall_time_per_point_s", "wall_time_ratio",
        )
        .sort(RUN_KEYS)
    )


def with_aa_gap(worst: pl.DataFrame, aa_summary: pl.DataFrame) -> pl.DataFrame:
    """A worst-case table with ``aa_robust_acc`` and ``gap_pp`` (100 × (worst case − AA))."""
    aa_acc = aa_summary.select(*MODEL_KEYS, pl.col("robust_acc").alias("aa_robust_acc"))
    return worst.join(aa_acc, on=MODEL_KEYS, how="left").with_columns(
        ((pl.col("robust_acc") - pl.col("aa_robust_acc")) * 100.0).alias("gap_pp")
    )


def _ratio(num: str, den: str) -> pl.Expr:
    return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den)).otherwise(None)
