"""Cross-entropy loss (maximised by the attacker)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tmifpe.losses.scaling import check_labels


def ce_loss(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
    """[paper] Untargeted: CE(z, y) = −z_y + log Σ_j e^{z_j}. Targeted: −CE(z, y_t).

    ``(N, K) -> (N,)``, computed in the logits' dtype (that is the point of the benchmark).
    """
    check_labels(logits, labels, targets)
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")
