"""Measured clean and AutoAttack accuracy against the numbers a leaderboard reports."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from tmifpe.aggregate.keys import MODEL_KEYS

LEADERBOARD_SCHEMA = {
    "suite": pl.String, "dataset": pl.String, "model": pl.String, "robustbench_id": pl.String,
    "n": pl.Int64, "reported_clean_acc": pl.Float64, "measured_clean_acc": pl.Float64,
    "clean_diff_pp": pl.Float64, "reported_aa_acc": pl.Float64, "measured_aa_acc": pl.Float64,
    "aa_ci_low": pl.Float64, "aa_ci_high": pl.Float64, "aa_diff_pp": pl.Float64,
    "reported_aa_in_ci": pl.Boolean, "source": pl.String,
}


def leaderboard_comparison(
    clean: pl.DataFrame,
    aa_summary: pl.DataFrame,
    leaderboard: Mapping | None,
    model_ids: Mapping[str, tuple[str, str]] | None,
) -> pl.DataFrame:
    """One row per grid model listed in ``model_ids`` (grid key → (dataset, leaderboard id))
    that has results and an entry ``leaderboard[dataset][id]`` (``tmifpe/leaderboard.json``
    layout: ``clean_acc``/``autoattack_acc`` in percent). All accuracies here are in percent.

    Columns: LEADERBOARD_SCHEMA. measured_clean_acc comes from the attack cells (AutoAttack's
    own clean pass if the model has no cells); measured_aa_acc and its Wilson 95% interval
    from the AutoAttack file (null without one); reported_aa_in_ci tells whether the reported
    AA accuracy lies inside that interval.
    """
    if not leaderboard or not model_ids:
        return pl.DataFrame(schema=LEADERBOARD_SCHEMA)
    measured = _measured(clean, aa_summary)
    rows = []
    for row in measured.iter_rows(named=True):
        if row["model"] not in model_ids:
            continue
        dataset, model_id = model_ids[row["model"]]
        entry = leaderboard.get(dataset, {}).get(model_id)
        if entry is None:
            continue
        rep_clean, rep_aa = float(entry["clean_acc"]), float(entry["autoattack_acc"])
        aa_acc, low, high = row["aa_acc"], row["aa_low"], row["aa_high"]
        rows.append({
            **{k: row[k] for k in MODEL_KEYS}, "robustbench_id": model_id, "n": row["n"],
            "reported_clean_acc": rep_clean, "measured_clean_acc": row["clean_acc"],
            "clean_diff_pp": _diff(row["clean_acc"], rep_clean),
            "reported_aa_acc": rep_aa, "measured_aa_acc": aa_acc,
            "aa_ci_low": low, "aa_ci_high": high, "aa_diff_pp": _diff(aa_acc, rep_aa),
            "reported_aa_in_ci": None if low is None else bool(low <= rep_aa <= high),
            "source": str(entry.get("source", "")),
        })
    return pl.DataFrame(rows, schema=LEADERBOARD_SCHEMA, orient="row").sort(MODEL_KEYS)


def _measured(clean: pl.DataFrame, aa_summary: pl.DataFrame) -> pl.DataFrame:
    pct = 100.0
    cells = clean.select(*MODEL_KEYS, pl.col("n"), (pl.col("clean_acc") * pct).alias("cc"))
    aa = aa_summary.select(
        *MODEL_KEYS,
        pl.col("n").alias("aa_n"),
        (pl.col("clean_acc") * pct).alias("aa_clean"),
        (pl.col("robust_acc") * pct).alias("aa_acc"),
        (pl.col("ci_low") * pct).alias("aa_low"),
        (pl.col("ci_high") * pct).alias("aa_high"),
    )
    return (
        cells.join(aa, on=MODEL_KEYS, how="full", coalesce=True)
        .with_columns(
            pl.coalesce("cc", "aa_clean").alias("clean_acc"), pl.coalesce("n", "aa_n").alias("n")
        )
        .sort(MODEL_KEYS)
    )


def _diff(measured: float | None, reported: float) -> float | None:
    return None if measured is None else measured - reported
