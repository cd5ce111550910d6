"""The detached top-2 logit gap Δ that MIFPE and T-MIFPE divide by, and the scaling itself.

One guarded Δ (:func:`guarded_gap`) is used everywhere: for the scale c = t/Δ of
:func:`scale_logits` and by :func:`tmifpe.losses.tmifpe.tstar.optimal_t`, so t* is always chosen
for the Δ the loss divides by.
"""

from __future__ import annotations

import torch
from torch import Tensor


def guarded_gap(logits: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """(Δ, tie): Δ = z_π1 − z_π2 of the detached logits in float64 (exact for fp16/bf16/fp32
    logits), ``(N, K) -> (N,)``, and the (N,) bool rows where the guard replaced it by 1.

    [paper] MIFPE/T-MIFPE scale logits by c = t/Δ with Δ detached. Guard [derived here]: where
    Δ is 0 (top-2 tie), below the smallest normal number of ``dtype`` (default: the logits'
    dtype; numerically a tie) or not finite, the row is a *tie*: Δ := 1, and every caller uses
    t := 1 there, so c = 1 (plain CE on max-shifted logits). A tie is exactly where plain CE has
    no finite-precision problem (its top-2 gap is already 0 < 1), and the fallback keeps c
    finite: in fp16 a subnormal Δ = 2^-17 would give 1/Δ = 131072 > 65504 (NaN loss).
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {tuple(logits.shape)}")
    tiny = torch.finfo(logits.dtype if dtype is None else dtype).smallest_normal
    top2 = logits.detach().topk(2, dim=1).values.double()  # (N, K) -> (N, 2)
    gap = top2[:, 0] - top2[:, 1]
    tie = ~(torch.isfinite(gap) & (gap >= tiny))
    return torch.where(tie, torch.ones_like(gap), gap), tie


def top2_gap(logits: Tensor) -> Tensor:
    """The guarded Δ of :func:`guarded_gap` (float64, detached, 1 on ties)."""
    return guarded_gap(logits)[0]


def scale_factor(logits: Tensor, t: Tensor) -> Tensor:
    """(N,) c = t/Δ in the logits' dtype, detached [paper]; ties (see :func:`guarded_gap`) get
    c = 1. Computed in float64 and capped at the dtype's largest finite number before the one
    rounding to the dtype [derived here], so c is finite in every dtype (the cap only binds for
    t > 4 on a Δ within a factor 4 of fp16's smallest normal)."""
    delta, tie = guarded_gap(logits)
    c = torch.where(tie, torch.ones_like(delta), t.detach().double() / delta)
    return c.clamp(max=torch.finfo(logits.dtype).max).to(logits.dtype)


def scale_logits(logits: Tensor, t: Tensor) -> Tensor:
    """(z − max_j z_j)·c with the row max and c = :func:`scale_factor` detached, ``(N, K)``.

    [derived here] Subtracting the detached row max first leaves CE and its gradient unchanged
    in exact arithmetic (CE is shift-invariant, the shift carries no gradient), but makes the
    scaled gaps exact in low precision: z_π1 − z_π2 is computed without rounding (Sterbenz) when
    the two are within a factor 2, then scaled once. Without it fp16 logits [20, 19.953, …] at
    t = 1.278 give c·20 ≈ 544 where fp16's spacing is 0.5, a scaled top-2 gap of 1.5 instead of
    1.278 and a logit gradient 16% off (bf16: 18-25%).
    """
    shifted = logits - logits.detach().amax(dim=1, keepdim=True)
    return shifted * scale_factor(logits, t)[:, None]


def check_labels(logits: Tensor, labels: Tensor, targets: Tensor | None) -> None:
    """Shape checks shared by every loss: one-line ValueError naming what is wrong."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    n = logits.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if targets is not None and targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
