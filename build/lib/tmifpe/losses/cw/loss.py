"""Carlini-Wagner margin loss (maximised by the attacker)."""

from __future__ import annotations

import torch
from torch import Tensor

from tmifpe.losses.scaling import check_labels


def cw_loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
    """[paper] Untargeted: −(z_y − max_{j≠y} z_j). Targeted: −(z_y − z_t), as in AutoAttack's
    targeted DLR numerator and the MIFPE code. ``(N, K) -> (N,)``.
    """
    check_labels(logits, labels, targets)
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is not None:
        return logits.gather(1, targets[:, None]).squeeze(1) - z_y
    others = logits.masked_fill(_onehot(labels, logits), float("-inf"))
    return others.amax(dim=1) - z_y


def _onehot(labels: Tensor, logits: Tensor) -> Tensor:
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
