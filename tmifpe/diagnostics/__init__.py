"""Diagnostics of floating-point error in attack gradients.

:mod:`.gradients` measures and compares input gradients against float64, :mod:`.bins` bins them
by the top-2 gap, :mod:`.verdicts` checks them against the theory's thresholds,
:mod:`.tstar_trace` records t* inside T-MIFPE attacks, :mod:`.plan` says what is measured on
which points; the runner is :mod:`tmifpe.evaluation.diagnostics`.
"""

from pathlib import Path

from tmifpe.diagnostics.bins import gap_bin_edges, gap_bins, summarise_bins
from tmifpe.diagnostics.gradients import (
    GradientErrors,
    InputGradient,
    compare,
    gradient_errors,
    input_gradient,
    scaled_gap,
)
from tmifpe.diagnostics.plan import DiagnosticsPlan
from tmifpe.diagnostics.tstar_trace import TStarRecorder, summarise_tstar
from tmifpe.diagnostics.verdicts import ce_zero_gradient_verdict, scaled_loss_verdict

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
