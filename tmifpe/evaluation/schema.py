"""The one declaration of the per-example result frames (docs/results-schema.md).

Every runner builds its frame with :func:`build_frame`, the aggregation reads with the same
dtypes. Rows carry no suite name: a result depends on the settings, not on what the suite is
called (the aggregation adds the suite it aggregates). Verdict columns: ``robust_fp32`` is
clean-correct and not broken, broken = inside the eps-ball and [0,1], finite logits, argmax ≠
label (tmifpe.verify); ``nonfinite_fp32``/``nonfinite_fp64`` flag NaN/±Inf verdict logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl
from torch import Tensor

# Attack cell: one row per (precision, targeted, example) of one model × loss × budget.
CELL_SCHEMA: dict[str, pl.DataType] = {
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
    "missed_hits": pl.Int64(),
    "nonfinite_fp32": pl.Boolean(),
    "nonfinite_fp64": pl.Boolean(),
}
CELL_ROW_KEYS = ["dataset", "model", "loss", "targeted", "precision", "budget", "example"]

# AutoAttack: one row per example of one model.
AA_SCHEMA: dict[str, pl.DataType] = {
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
    "nonfinite_fp32": pl.Boolean(),
    "nonfinite_fp64": pl.Boolean(),
}
AA_ROW_KEYS = ["dataset", "model", "example"]

# Fast preset: one row per example of one model (docs/fast.md).
FAST_SCHEMA: dict[str, pl.DataType] = {
    "dataset": pl.String(),
    "model": pl.String(),
    "preset": pl.String(),
    "eps": pl.Float64(),
    "seed": pl.Int64(),
    "example": pl.Int64(),
    "split": pl.String(),
    "label": pl.Int64(),
    "clean_correct": pl.Boolean(),
    "success": pl.Boolean(),
    "broken_by": pl.String(),
    "valid": pl.Boolean(),
    "robust_fp32": pl.Boolean(),
    "robust_fp64": pl.Boolean(),
    "margin_fp32": pl.Float64(),
    "n_forward": pl.Int64(),
    "n_backward": pl.Int64(),
    "n_queries": pl.Int64(),
    "n_verify": pl.Int64(),
    "passes": pl.Int64(),
    "forward_equivalents": pl.Int64(),
    "zero_grad_steps": pl.Int64(),
    "nonfinite_steps": pl.Int64(),
    "flag_zero_grad": pl.Boolean(),
    "flag_nonfinite": pl.Boolean(),
    "guard_broken": pl.Boolean(),
    "escalated": pl.Boolean(),
    "randomized": pl.Boolean(),
    "nonfinite_fp32": pl.Boolean(),
    "nonfinite_fp64": pl.Boolean(),
}
FAST_ROW_KEYS = ["dataset", "model", "example"]


def build_frame(schema: dict[str, pl.DataType], columns: Mapping[str, Any]) -> pl.DataFrame:
    """A frame with exactly ``schema``'s columns, in its order and dtypes (strict cast).

    ``columns`` maps every schema column to a sequence, NumPy array or CPU tensor of one length,
    or a scalar repeated over the rows. ValueError naming missing or unknown columns.
    """
    missing, extra = schema.keys() - columns.keys(), columns.keys() - schema.keys()
    if missing or extra:
        raise ValueError(f"frame columns differ from the schema: missing {sorted(missing)}, "
                         f"unknown {sorted(extra)}")
    lengths = {len(v) for v in columns.values() if not _is_scalar(v)}
    if len(lengths) > 1:
        raise ValueError(f"frame columns have different lengths: {sorted(lengths)}")
    n = lengths.pop() if lengths else 1
    series = []
    for name, dtype in schema.items():
        value = columns[name]
        if _is_scalar(value):
            value = [value] * n
        elif isinstance(value, Tensor):
            value = value.detach().cpu().numpy()
        series.append(pl.Series(name, value).cast(dtype, strict=True))
    return pl.DataFrame(series)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool, int, float)) or (
        isinstance(value, Tensor) and value.ndim == 0)
