"""Binning by the float64 top-2 logit gap Δ, and per-bin summaries of gradient errors.

Edges: 0, :data:`EXTRA_EDGES`, both thresholds of every measured precision
(:func:`tmifpe.losses.tmifpe.tstar.gap_thresholds`, [derived] docs/theory.md §3) and +inf; bin i
is [edges[i], edges[i+1]); NaN/±Inf gaps go to :data:`NONFINITE_BIN`, never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl
import torch
from torch import Tensor

from tmifpe.losses.tmifpe.tstar import gap_thresholds
from tmifpe.precision import PURE_PRECISIONS, Precision

# Extra bin edges (raw top-2 gap) besides 0, the thresholds of the measured dtypes and +inf.
EXTRA_EDGES = (2.0, 10.0, 30.0, 60.0)
NONFINITE_BIN = -1  # bin of examples whose float64 logits hold a NaN/±Inf


def gap_bin_edges(precisions: Sequence[Precision]) -> tuple[float, ...]:
    """Sorted edges 0 < … < +inf: :data:`EXTRA_EDGES` and both thresholds of every precision.

    Bin i is [edges[i], edges[i+1]). Thresholds: ``gap_thresholds`` [derived, docs/theory.md §3].
    """
    edges = {0.0, *EXTRA_EDGES}
    for p in precisions:
        if not p.autocast:  # theory's thresholds: pure dtypes only
            edges.update(gap_thresholds(p.dtype))
    return (*sorted(edges), math.inf)


def gap_bins(gap: Tensor, edges: Sequence[float]) -> Tensor:
    """(N,) int64 bin index of each gap (bin i = [edges[i], edges[i+1])), -1 for NaN/±Inf."""
    inner = torch.tensor(list(edges[1:-1]), dtype=torch.float64)
    idx = torch.bucketize(gap.to(torch.float64), inner, right=True)
    return torch.where(torch.isfinite(gap), idx, NONFINITE_BIN)


def _med(col: str) -> pl.Expr:
    return pl.col(col).fill_nan(None).median().alias(f"median_{col}")


def summarise_bins(examples: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Per (``keys``, bin) row of an example frame with ``bin`` from :func:`gap_bins`.

    count; n_nonfinite_grad / n_nonfinite_logits (flagged rows, included in count);
    frac_zero_grad, frac_zero_logit_grad, frac_zero_k_term (over all rows; flagged rows count
    as non-zero);
    medians of rel_err, cosine, sign_flip, gap, scaled_gap over the finite values.
    """
    return examples.group_by([*keys, "bin"]).agg(
        pl.len().cast(pl.Int64).alias("count"),
        pl.col("nonfinite_grad").sum().cast(pl.Int64).alias("n_nonfinite_grad"),
        pl.col("n_nonfinite").sum().cast(pl.Int64).alias("n_nonfinite_entries"),
        pl.col("nonfinite_logits").sum().cast(pl.Int64).alias("n_nonfinite_logits"),
        pl.col("zero_grad").mean().alias("frac_zero_grad"),
        pl.col("zero_logit_grad").mean().alias("frac_zero_logit_grad"),
        pl.col("zero_k_term").mean().alias("frac_zero_k_term"),
        _med("rel_err"), _med("cosine"), _med("sign_flip"), _med("gap"), _med("scaled_gap"),
    ).sort([*keys, "bin"])


BIN_KEYS = ("loss", "targeted", "precision", "point_set", "point_step", "phase")


def bin_table(examples: pl.DataFrame, edges: Sequence[float]) -> pl.DataFrame:
    """Per-bin rows per point set, plus point_set "all" (point_step null) pooling every set;
    bin ranges [bin_lo, bin_hi) from ``edges`` (null for the non-finite bin)."""
    ex = examples.with_columns(
        pl.Series("bin", gap_bins(torch.from_numpy(examples["gap"].to_numpy()), edges).numpy()))
    per = summarise_bins(ex, BIN_KEYS).join(
        ex.group_by(BIN_KEYS).agg(pl.len().cast(pl.Int64).alias("n_points")), on=BIN_KEYS)
    pooled = ex.with_columns(pl.lit("all").alias("point_set"),
                             pl.lit(None, dtype=pl.Int64).alias("point_step"))
    allrows = summarise_bins(pooled, BIN_KEYS).join(
        pooled.group_by(BIN_KEYS).agg(pl.len().cast(pl.Int64).alias("n_points")),
        on=BIN_KEYS, nulls_equal=True)
    lo = {i: edges[i] for i in range(len(edges) - 1)}
    hi = {i: edges[i + 1] for i in range(len(edges) - 1)}
    # theory §3's thresholds are for pure low-precision logits and loss; under autocast the
    # loss is fp32 (its rows get null thresholds)
    thr = {p.value: gap_thresholds(p.dtype) for p in PURE_PRECISIONS}
    frame = pl.concat([per, allrows.select(per.columns)]).with_columns(
        pl.col("bin").replace_strict(lo, default=None, return_dtype=pl.Float64).alias("bin_lo"),
        pl.col("bin").replace_strict(hi, default=None, return_dtype=pl.Float64).alias("bin_hi"),
        pl.col("precision").replace_strict({k: v[0] for k, v in thr.items()}, default=None,
                                           return_dtype=pl.Float64).alias("threshold_round"),
        pl.col("precision").replace_strict({k: v[1] for k, v in thr.items()}, default=None,
                                           return_dtype=pl.Float64).alias("threshold_underflow"))
    return frame.sort(["loss", "targeted", "precision", "point_step", "phase", "bin"],
                      nulls_last=True)
