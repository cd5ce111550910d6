"""Key columns shared by the aggregate tables and the label of an attack (loss × targeted)."""

from __future__ import annotations

import polars as pl

MODEL_KEYS = ["suite", "dataset", "model"]
# One attack cell run: model × loss × targeted × precision × budget.
RUN_KEYS = [*MODEL_KEYS, "loss", "targeted", "precision", "budget"]


def attack_label() -> pl.Expr:
    """``<loss>_targeted`` / ``<loss>_untargeted`` (the metrics.json key of an attack)."""
    return pl.concat_str(
        pl.col("loss"),
        pl.when(pl.col("targeted")).then(pl.lit("_targeted")).otherwise(pl.lit("_untargeted")),
    )


def robust() -> pl.Expr:
    """Headline verdict: robust at fp32 and clean-correct (clean-incorrect is never robust)."""
    return pl.col("robust_fp32") & pl.col("clean_correct")


def robust64() -> pl.Expr:
    """Same verdict with the fp64 re-verification."""
    return pl.col("robust_fp64") & pl.col("clean_correct")
