"""MIFPE loss (Yu & Xu, CVPR 2023): CE on logits scaled by T/Δ with T = 1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tmifpe.losses.scaling import check_labels, scale_logits

MIFPE_T = 1.0


def mifpe_loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
    """[paper] CE(c·z, y) with c = T/Δ_detached, T = 1 (ICLR abstract; the public code's default
    gives T = 10). Targeted: −CE(c·z, y_t). Computed as CE(c·(z − max z), ·) with the guarded
    Δ (a top-2 tie gives c = 1); see :func:`tmifpe.losses.scaling.scale_logits`.

    ``(N, K) -> (N,)``; no gradient flows through Δ or the max.
    """
    check_labels(logits, labels, targets)
    t = torch.full(labels.shape, MIFPE_T, dtype=torch.float64, device=logits.device)
    scaled = scale_logits(logits, t)
    if targets is None:
        return F.cross_entropy(scaled, labels, reduction="none")
    return -F.cross_entropy(scaled, targets, reduction="none")
