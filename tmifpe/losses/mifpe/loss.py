"""MIFPE loss (Yu & Xu, CVPR 2023): CE on logits scaled by T/Δ, T = 1 by default."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tmifpe.losses.scaling import check_labels, scale_logits

MIFPE_T = 1.0  # the paper's T; its released code defaults to T = 10 (the ablations run both)


def mifpe_loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None,
               temperature: float = MIFPE_T) -> Tensor:
    """[paper] CE(c·z, y) with c = T/Δ_detached, T = ``temperature`` (1 in the ICLR abstract;
    the public code's default gives T = 10). Targeted: −CE(c·z, y_t). Computed as
    CE(c·(z − max z), ·) with the guarded Δ (a top-2 tie gives c = 1); see
    :func:`tmifpe.losses.scaling.scale_logits`.

    ``(N, K) -> (N,)``; no gradient flows through Δ or the max.
    """
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"MIFPE temperature T={temperature!r}: expected a finite number > 0")
    check_labels(logits, labels, targets)
    t = torch.full(labels.shape, float(temperature), dtype=torch.float64, device=logits.device)
    scaled = scale_logits(logits, t)
    if targets is None:
        return F.cross_entropy(scaled, labels, reduction="none")
    return -F.cross_entropy(scaled, targets, reduction="none")
