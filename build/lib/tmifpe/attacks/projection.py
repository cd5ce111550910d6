"""Projection onto the l∞ eps-ball ∩ [0,1], exact in float32 pixel space."""

from __future__ import annotations

import torch
from torch import Tensor


def linf_box(x0: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-pixel float32 bounds [lo, hi] of the feasible set {x : |x − x0|∞ ≤ eps, 0 ≤ x ≤ 1}.

    [derived here] The bounds are computed in float64 and rounded *inward* to float32, so every
    float32 point inside them satisfies |x − x0| ≤ eps exactly (as real numbers), also when eps
    is not representable in float32 (e.g. 8/255). ``x0`` must be float32 in [0,1].
    """
    x64 = x0.double()
    lo64 = (x64 - eps).clamp_(min=0.0)
    hi64 = (x64 + eps).clamp_(max=1.0)
    lo = lo64.float()
    hi = hi64.float()
    # float32 rounding may step outside the ball: move one ulp inward where it did.
    lo = torch.where(lo.double() < lo64, torch.nextafter(lo, torch.full_like(lo, 2.0)), lo)
    hi = torch.where(hi.double() > hi64, torch.nextafter(hi, torch.full_like(hi, -1.0)), hi)
    return lo, hi


def project(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Clamp ``x`` into the box [lo, hi] (the eps-ball ∩ [0,1] from :func:`linf_box`)."""
    return torch.minimum(torch.maximum(x, lo), hi)


def random_start(x0: Tensor, eps: float, lo: Tensor, hi: Tensor, gen: torch.Generator) -> Tensor:
    """[paper, MIFPE code] Random start on the eps-ball surface: x0 ± eps per pixel, signs
    uniform, then projected onto [lo, hi]."""
    # drawn on the generator's device (CPU) so the start does not depend on the attack device
    signs = torch.randint(0, 2, x0.shape, generator=gen, dtype=torch.int8, device=gen.device)
    return project(x0 + eps * (2.0 * signs.to(x0) - 1.0), lo, hi)
