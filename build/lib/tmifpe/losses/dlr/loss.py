"""Difference-of-logits-ratio loss (Croce & Hein 2020), maximised by the attacker."""

from __future__ import annotations

import torch
from torch import Tensor

from tmifpe.losses.scaling import check_labels

_DLR_EPS = 1e-12


def dlr_loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
    """[paper] Untargeted: −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e−12), needs K ≥ 3.
    Targeted: −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e−12), needs K ≥ 4.

    ``(N, K) -> (N,)``. Raises ValueError for too few classes (no silent fallback: DLR is
    undefined there). In fp16 the 1e−12 rounds to 0, as it does in AutoAttack under autocast.
    """
    check_labels(logits, labels, targets)
    k = logits.shape[1]
    need = 3 if targets is None else 4
    if k < need:
        kind = "untargeted" if targets is None else "targeted"
        raise ValueError(f"{kind} DLR needs at least {need} classes, got K={k}")
    z_sorted = logits.sort(dim=1, descending=True).values  # (N, K)
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is None:
        onehot = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
        z_other = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
        return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + _DLR_EPS)
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    denom = z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + _DLR_EPS
    return -(z_y - z_t) / denom
