"""Measured cost of an attack: every model call charged to the examples it was made for.

A call with grad enabled on an input that requires grad is one gradient evaluation (forward +
backward) per row, any other call one query per row. Each row is attributed to ONE example of
the current batch: the nearest clean point (L2), made a one-to-one assignment (Hungarian,
scipy) whenever two rows of a call would map to the same example. Per-batch totals are exact by
construction; per-example counts are exact whenever each row is nearer its own clean point than
any other of the batch (always for APGD/Square iterates if the batch's clean points are
> 2·eps·√D apart).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn


class CallCounter(nn.Module):
    """Forwards to ``model`` and charges every call to the examples of the bound batch
    (``clean``/``index`` set by the caller, ``None`` = not counted)."""

    def __init__(self, model: nn.Module, n_grad: Tensor, n_queries: Tensor) -> None:
        super().__init__()
        self.model = model
        self.n_grad, self.n_queries = n_grad, n_queries
        self.clean: Tensor | None = None  # (B, ...) clean points of the current batch
        self.index: Tensor | None = None  # (B,) their example indices

    def forward(self, x: Tensor) -> Tensor:
        if self.clean is not None and self.index is not None and x.shape[0] > 0:
            rows = self.index[match_rows(x.detach(), self.clean).cpu()]
            grad = torch.is_grad_enabled() and x.requires_grad
            (self.n_grad if grad else self.n_queries).index_add_(
                0, rows, torch.ones_like(rows))
        return self.model(x)


def match_rows(z: Tensor, clean: Tensor) -> Tensor:
    """Position in ``clean`` (B, ...) of the example behind each row of ``z`` (m, ...): nearest
    in L2, made one-to-one by a minimum-cost assignment if two rows pick the same example."""
    if z.shape[0] > clean.shape[0]:
        raise RuntimeError(f"a model call had {z.shape[0]} rows, the batch has {clean.shape[0]}")
    d = torch.cdist(z.flatten(1).float(), clean.flatten(1).float())  # (m, B)
    pos = d.argmin(dim=1)
    if pos.unique().numel() < pos.numel():
        _, cols = linear_sum_assignment(d.double().cpu().numpy())
        pos = torch.from_numpy(cols).to(torch.int64)
    return pos
