"""Diagnostics of floating-point error in attack gradients (see ``gradient_error``)."""

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

__all__ = [
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
    "scaled_gap",
    "scaled_loss_verdict",
    "summarise_bins",
    "summarise_tstar",
]
