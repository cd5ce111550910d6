"""MIFPE loss (Yu & Xu, CVPR 2023): CE on logits scaled by T/Δ with T = 1."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tmifpe.losses.scaling import check_labels, top2_gap

MIFPE_T = 1.0


def mifpe_loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
    """[paper] CE(c·z, y) with c = T/Δ_detached, T = 1 (ICLR abstract; the public code's default
    gives T = 10). Targeted: −CE(c·z, y_t). Δ = 0 falls back to c = T (see ``top2_gap``).

    ``(N, K) -> (N,)``; no gradient flows through Δ.
    """
    check_labels(logits, labels, targets)
    scale = (MIFPE_T / top2_gap(logits)).to(logits.dtype)  # (N,), detached
    scaled = logits * scale[:, None]
    if targets is None:
        return F.cross_entropy(scaled, labels, reduction="none")
    return -F.cross_entropy(scaled, targets, reduction="none")
