"""Clean accuracy, robust accuracy per attack run, and the per-example worst case over attacks."""

from __future__ import annotations

import polars as pl

from tmifpe.aggregate.keys import MODEL_KEYS, RUN_KEYS, attack_label, robust, robust64
from tmifpe.aggregate.stats import count, proportion


def clean_accuracy(cells: pl.DataFrame) -> pl.DataFrame:
    """Clean (fp32) accuracy per model over the evaluated points.

    Columns: suite, dataset, model, n, n_clean_correct, clean_acc, ci_low, ci_high.
    ``clean_correct`` of one example must agree across all cells of its model.
    """
    points = cells.select(*MODEL_KEYS, "example", "clean_correct").unique()
    clash = points.filter(pl.struct(*MODEL_KEYS, "example").is_duplicated()).sort(
        *MODEL_KEYS, "example"
    )
    if clash.height:
        row = clash.row(0, named=True)
        raise ValueError(
            f"clean_correct differs between cells for model {row['model']!r}, "
            f"example {row['example']} ({clash.height // 2} examples in all)"
        )
    return (
        points.group_by(MODEL_KEYS)
        .agg(pl.len().cast(pl.Int64).alias("n"), count(pl.col("clean_correct"), "n_clean_correct"))
        .with_columns(proportion("n_clean_correct", "n", "clean_acc"))
        .sort(MODEL_KEYS)
    )


def robust_accuracy(cells: pl.DataFrame) -> pl.DataFrame:
    """Robust accuracy per model × loss × targeted × precision × budget.

    Columns: RUN_KEYS, n, n_clean_correct, n_robust, robust_acc, ci_low, ci_high (Wilson 95%),
    n_robust_fp64, robust_acc_fp64.
    """
    return (
        cells.group_by(RUN_KEYS)
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            count(pl.col("clean_correct"), "n_clean_correct"),
            count(robust(), "n_robust"),
            count(robust64(), "n_robust_fp64"),
        )
        .with_columns(proportion("n_robust", "n", "robust_acc"))
        .with_columns(proportion("n_robust_fp64", "n", "robust_acc_fp64", ci=False))
        .select(*RUN_KEYS, "n", "n_clean_correct", "n_robust", "robust_acc", "ci_low", "ci_high",
                "n_robust_fp64", "robust_acc_fp64")
        .sort(RUN_KEYS)
    )


def worst_case(cells: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per-example worst case over every attack (loss × targeted) run within ``keys``.

    An example is robust only if it is robust under every attack present in its group (and, when
    ``precision`` is not in ``keys``, under every precision). Columns: keys, n_attacks, attacks
    (comma-separated ``<loss>_<targeted|untargeted>`` labels), n, n_robust, robust_acc, ci_low,
    ci_high. Attacks not run in a group are simply not part of it (see ``attacks``).
    """
    labelled = cells.with_columns(attack_label().alias("attack"))
    attacks = (
        labelled.select(*keys, "attack").unique()
        .group_by(keys)
        .agg(pl.len().cast(pl.Int64).alias("n_attacks"), pl.col("attack").sort().str.join(","))
        .rename({"attack": "attacks"})
    )
    per_example = labelled.group_by(*keys, "example").agg(robust().all().alias("robust"))
    summary = (
        per_example.group_by(keys)
        .agg(pl.len().cast(pl.Int64).alias("n"), count(pl.col("robust"), "n_robust"))
        .with_columns(proportion("n_robust", "n", "robust_acc"))
    )
    return (
        attacks.join(summary, on=keys, how="inner")
        .select(*keys, "n_attacks", "attacks", "n", "n_robust", "robust_acc", "ci_low", "ci_high")
        .sort(keys)
    )
