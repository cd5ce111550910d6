"""T-MIFPE loss (arXiv 2507.22428): CE on logits scaled by t*/Δ, t* chosen per example."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tmifpe.losses.scaling import check_labels, scale_logits
from tmifpe.losses.tmifpe.tstar import optimal_t


def tmifpe_loss(
    logits: Tensor, labels: Tensor, *, targets: Tensor | None = None, rule: str = "coef"
) -> Tensor:
    """[paper] CE((t*/Δ)·z, y), t* recomputed from the current logits for the phase the example
    is in, t* and Δ detached. Targeted: −CE((t*/Δ)·z, y_t). ``rule`` picks the phase (ii)/(iii)
    rule ("mifpe", "coef", "cap"; see ``tmifpe.losses.tmifpe.tstar``); "cap" uses the logits' dtype.
    Computed as CE(c·(z − max z), ·) with the one guarded Δ that t* was chosen for (a tie below
    the dtype's smallest normal gives t* = 1, c = 1); see ``tmifpe.losses.scaling``.

    ``(N, K) -> (N,)``.
    """
    check_labels(logits, labels, targets)
    t_star = optimal_t(logits, labels, targets=targets, rule=rule, dtype=logits.dtype)
    scaled = scale_logits(logits, t_star)
    if targets is None:
        return F.cross_entropy(scaled, labels, reduction="none")
    return -F.cross_entropy(scaled, targets, reduction="none")
