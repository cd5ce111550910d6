"""How the attack's floating-point precision changes its outcome, and where NaN/Inf appeared."""

from __future__ import annotations

import polars as pl

from tmifpe.aggregate.keys import MODEL_KEYS, RUN_KEYS, robust
from tmifpe.aggregate.stats import count, proportion

REFERENCE_PRECISION = "fp64"
_SAME_RUN_BUT_PRECISION = [k for k in RUN_KEYS if k != "precision"]


def precision_effect(cells: pl.DataFrame) -> pl.DataFrame:
    """Per run: robust accuracy, its difference to the fp64 run of the same attack and budget,
    and the precision symptoms.

    Columns: RUN_KEYS, n, robust_acc, fp64_robust_acc (null if no fp64 run), delta_vs_fp64_pp
    (100 × (robust_acc − fp64_robust_acc)), n_dtype_only_examples (examples with at least one
    iterate misclassified in the attack dtype but not by the fp32 check: a measured precision
    effect of its own, not in robust_acc, since the attack went on from them), dtype_only_hits
    (such iterates in all), n_missed_examples / missed_hits (the mirror: iterates the fp32
    check misclassified but the attack dtype did not; tmifpe.attacks.runs), n_false_success
    (confirmed successes the final fp32 verification rejected; 0 unless the confirmation and
    the verification disagree), n_fp32_fp64_disagree, zero_grad_steps, backward_passes,
    zero_grad_fraction (zero_grad_steps / backward_passes, null if no backward pass),
    nonfinite_steps.
    """
    per_run = (
        cells.group_by(RUN_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            count(robust(), "n_robust"),
            count(pl.col("dtype_only_hits") > 0, "n_dtype_only_examples"),
            pl.col("dtype_only_hits").sum().cast(pl.Int64),
            count(pl.col("missed_hits") > 0, "n_missed_examples"),
            pl.col("missed_hits").sum().cast(pl.Int64),
            count(pl.col("false_success"), "n_false_success"),
            count(pl.col("fp32_fp64_disagree"), "n_fp32_fp64_disagree"),
            pl.col("zero_grad_steps").sum().cast(pl.Int64),
            pl.col("n_backward").sum().cast(pl.Int64).alias("backward_passes"),
            pl.col("nonfinite_steps").sum().cast(pl.Int64),
        )
        .with_columns(proportion("n_robust", "n", "robust_acc", ci=False))
    )
    reference = per_run.filter(pl.col("precision") == REFERENCE_PRECISION).select(
        *_SAME_RUN_BUT_PRECISION, pl.col("robust_acc").alias("fp64_robust_acc")
    )
    return (
        per_run.join(reference, on=_SAME_RUN_BUT_PRECISION, how="left")
        .with_columns(
            ((pl.col("robust_acc") - pl.col("fp64_robust_acc")) * 100.0).alias("delta_vs_fp64_pp"),
            pl.when(pl.col("backward_passes") > 0)
            .then(pl.col("zero_grad_steps") / pl.col("backward_passes"))
            .otherwise(None)
            .alias("zero_grad_fraction"),
        )
        .select(
            *RUN_KEYS, "n", "robust_acc", "fp64_robust_acc", "delta_vs_fp64_pp",
            "n_dtype_only_examples", "dtype_only_hits", "n_missed_examples", "missed_hits",
            "n_false_success",
            "n_fp32_fp64_disagree", "zero_grad_steps", "backward_passes",
            "zero_grad_fraction", "nonfinite_steps",
        )
        .sort(RUN_KEYS)
    )


NONFINITE_COLUMNS = [
    "n_nonfinite_fp32", "n_nonfinite_fp64", "n_examples_nonfinite_steps", "nonfinite_steps",
    "n_nan_margin_fp32", "n_inf_margin_fp32", "n_null_margin_fp32", "n_nan_margin_fp64",
    "n_inf_margin_fp64", "n_null_margin_fp64",
]


def nonfinite(cells: pl.DataFrame, aa: pl.DataFrame) -> pl.DataFrame:
    """Every run (and AutoAttack file) where NaN/Inf appeared: points whose verdict logits are
    non-finite (``n_nonfinite_fp32``/``_fp64``: never counted as broken), skipped steps,
    non-finite or missing margins. Runs without any are left out; nothing non-finite is ever
    dropped silently.

    Columns: RUN_KEYS (AutoAttack rows: loss ``autoattack``, targeted false, precision ``fp32``,
    budget null), then NONFINITE_COLUMNS (null where the file has no such column).
    """
    verdicts = [count(pl.col(c), f"n_{c}") for c in ("nonfinite_fp32", "nonfinite_fp64")]
    runs = cells.group_by(RUN_KEYS).agg(
        *verdicts,
        count(pl.col("nonfinite_steps") > 0, "n_examples_nonfinite_steps"),
        pl.col("nonfinite_steps").sum().cast(pl.Int64),
        *_margin_counts("margin_fp32"),
        *_margin_counts("margin_fp64"),
    )
    autoattack = (
        aa.group_by(MODEL_KEYS)
        .agg(*verdicts, *_margin_counts("margin_fp32"))
        .with_columns(
            pl.lit("autoattack").alias("loss"),
            pl.lit(False).alias("targeted"),
            pl.lit("fp32").alias("precision"),
            pl.lit(None, dtype=pl.Int32).alias("budget"),
        )
    )
    table = pl.concat([runs, autoattack], how="diagonal_relaxed").select(
        *RUN_KEYS, *NONFINITE_COLUMNS
    )
    any_issue = pl.any_horizontal([pl.col(c).fill_null(0) > 0 for c in NONFINITE_COLUMNS])
    return table.filter(any_issue).sort(RUN_KEYS, nulls_last=True)


def _margin_counts(column: str) -> list[pl.Expr]:
    suffix = column.removeprefix("margin_")
    col = pl.col(column)
    return [
        count(col.is_nan(), f"n_nan_margin_{suffix}"),
        count(col.is_infinite(), f"n_inf_margin_{suffix}"),
        col.null_count().cast(pl.Int64).alias(f"n_null_margin_{suffix}"),
    ]
