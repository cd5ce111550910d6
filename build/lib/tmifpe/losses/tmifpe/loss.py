"""T-MIFPE loss (arXiv 2507.22428): CE on logits scaled by t*/Δ, t* chosen per example."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tmifpe.losses.scaling import check_labels, top2_gap
from tmifpe.losses.tmifpe.tstar import optimal_t


def tmifpe_loss(
    logits: Tensor, labels: Tensor, *, targets: Tensor | None = None, rule: str = "coef"
) -> Tensor:
    """[paper] CE((t*/Δ)·z, y), t* recomputed from the current logits for the phase the example
    is in, t* and Δ detached. Targeted: −CE((t*/Δ)·z, y_t). ``rule`` picks the phase (ii)/(iii)
    rule ("mifpe", "coef", "cap"; see ``tmifpe.losses.tmifpe.tstar``); "cap" uses the logits' dtype.

    ``(N, K) -> (N,)``.
    """
    check_labels(logits, labels, targets)
    t_star = optimal_t(logits, labels, targets=targets, rule=rule, dtype=logits.dtype)
    scale = (t_star.to(logits.dtype) / top2_gap(logits)).detach()  # (N,)
    scaled = logits * scale[:, None]
    if targets is None:
        return F.cross_entropy(scaled, labels, reduction="none")
    return -F.cross_entropy(scaled, targets, reduction="none")
