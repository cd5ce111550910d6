"""Column names and dtypes of the result files, as written in docs/results-schema.md."""

from __future__ import annotations

import polars as pl

# Attack cell: one row per (precision, targeted, example) of one model × loss × budget.
CELL_SCHEMA: dict[str, pl.DataType] = {
    "suite": pl.String(),
    "dataset": pl.String(),
    "model": pl.String(),
    "loss": pl.String(),
    "targeted": pl.Boolean(),
    "precision": pl.String(),
    "budget": pl.Int32(),
    "restarts": pl.Int32(),
    "n_targets": pl.Int32(),
    "eps": pl.Float64(),
    "seed": pl.Int64(),
    "example": pl.Int64(),
    "label": pl.Int64(),
    "clean_correct": pl.Boolean(),
    "attack_success": pl.Boolean(),
    "valid": pl.Boolean(),
    "robust_fp32": pl.Boolean(),
    "robust_fp64": pl.Boolean(),
    "false_success": pl.Boolean(),
    "fp32_fp64_disagree": pl.Boolean(),
    "first_success_iter": pl.Int32(),
    "success_target": pl.Int64(),
    "margin_fp32": pl.Float64(),
    "margin_fp64": pl.Float64(),
    "n_forward": pl.Int64(),
    "n_backward": pl.Int64(),
    "zero_grad_steps": pl.Int64(),
    "nonfinite_steps": pl.Int64(),
    "dtype_only_hits": pl.Int64(),
}
CELL_ROW_KEYS = ["suite", "dataset", "model", "loss", "targeted", "precision", "budget", "example"]

# AutoAttack: one row per example of one model.
AA_SCHEMA: dict[str, pl.DataType] = {
    "suite": pl.String(),
    "dataset": pl.String(),
    "model": pl.String(),
    "eps": pl.Float64(),
    "seed": pl.Int64(),
    "batch_size": pl.Int32(),
    "example": pl.Int64(),
    "label": pl.Int64(),
    "clean_correct": pl.Boolean(),
    "broken_by": pl.String(),
    "robust_after_apgd_ce": pl.Boolean(),
    "robust_after_apgd_t": pl.Boolean(),
    "robust_after_fab_t": pl.Boolean(),
    "robust_after_square": pl.Boolean(),
    "valid": pl.Boolean(),
    "robust_fp32": pl.Boolean(),
    "robust_fp64": pl.Boolean(),
    "margin_fp32": pl.Float64(),
    "n_grad": pl.Int64(),
    "n_queries": pl.Int64(),
}
AA_ROW_KEYS = ["suite", "dataset", "model", "example"]
