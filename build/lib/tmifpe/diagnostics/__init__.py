"""Diagnostics of floating-point error in attack gradients (see ``gradient_error``)."""

from pathlib import Path

from tmifpe.diagnostics.gradient_error import (
    DiagnosticsPlan,
    GradientErrors,
    InputGradient,
    TStarRecorder,
    ce_zero_gradient_verdict,
    compare,
    gap_bin_edges,
    gap_bins,
    gradient_errors,
    input_gradient,
    scaled_gap,
    scaled_loss_verdict,
    summarise_bins,
    summarise_tstar,
)

OUT_DIR = Path("results/diagnostics")


def output_paths(model: str, root: Path = OUT_DIR) -> tuple[Path, Path, Path]:
    """(bins parquet, t* parquet, verdict JSON) of ``model``: written by the diagnostics stage,
    read by the report."""
    return root / f"{model}.parquet", root / f"{model}.tstar.parquet", root / f"{model}.json"


__all__ = [
    "OUT_DIR",
    "DiagnosticsPlan",
    "GradientErrors",
    "InputGradient",
    "TStarRecorder",
    "ce_zero_gradient_verdict",
    "compare",
    "gap_bin_edges",
    "gap_bins",
    "gradient_errors",
    "input_gradient",
    "output_paths",
    "scaled_gap",
    "scaled_loss_verdict",
    "summarise_bins",
    "summarise_tstar",
]
