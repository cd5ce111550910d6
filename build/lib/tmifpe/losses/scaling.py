"""The detached top-2 logit gap Δ that MIFPE and T-MIFPE divide by."""

from __future__ import annotations

import torch
from torch import Tensor


def top2_gap(logits: Tensor) -> Tensor:
    """Δ = z_π1 − z_π2 on detached logits, ``(N, K) -> (N,)`` in the logits' dtype.

    [paper] MIFPE/T-MIFPE scale logits by c = T/Δ with Δ detached. Guard [derived here]: where
    Δ is 0 (top-2 tie), subnormal (below the dtype's smallest normal number) or not finite, Δ
    is replaced by 1, i.e. the logits are left unscaled (c = T). A tie is exactly where plain CE
    has no finite-precision problem (the scaled top-2 gap is already 0 < T), so unscaled CE is
    the natural fallback, and it keeps c finite: a subnormal Δ is numerically a tie, and in
    fp16 1/Δ would overflow (Δ = 2^-17 gives 1/Δ = 131072 > 65504, hence NaN loss and gradient);
    with Δ >= tiny, c <= T·2^(emax−1) stays finite for T < 4 in every IEEE format.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2, got {tuple(logits.shape)}")
    top2 = logits.detach().topk(2, dim=1).values  # (N, K) -> (N, 2)
    gap = top2[:, 0] - top2[:, 1]
    ok = torch.isfinite(gap) & (gap >= torch.finfo(gap.dtype).tiny)
    return torch.where(ok, gap, torch.ones_like(gap))


def check_labels(logits: Tensor, labels: Tensor, targets: Tensor | None) -> None:
    """Shape checks shared by every loss: one-line ValueError naming what is wrong."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    n = logits.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if targets is not None and targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},), got {tuple(targets.shape)}")
