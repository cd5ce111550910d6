"""Repair of float32 rounding at the eps-ball's edge.

pyautoattack computes ``x ± eps`` in float32, which can round outward (0.1, 8/255 are not
float32 numbers), so its points may leave the exact ball by ~1e-8. A point whose violation of
the exact ball ∩ [0,1] is at most ``SNAP_TOL`` is projected onto it
(:func:`tmifpe.attacks.projection.linf_box`, :func:`~tmifpe.attacks.projection.project`);
larger violations are left alone and rejected by the verification.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tmifpe.attacks.projection import linf_box, project

SNAP_TOL = 1e-6  # largest float32 rounding violation of the eps-ball that is repaired


def snap_to_ball(x0: Tensor, adv: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(adv', fixed)``: rows of ``adv`` (n, ...) violating the exact eps-ball around ``x0`` ∩
    [0,1] by 0 < v ≤ ``SNAP_TOL`` projected onto it; ``fixed`` (n,) bool flags them. Rows with
    a NaN or a larger violation are returned unchanged."""
    lo, hi = linf_box(x0, eps)
    over = torch.maximum(lo - adv, adv - hi).flatten(1).amax(dim=1)  # (n,); NaN stays unfixed
    fixed = (over > 0) & (over <= SNAP_TOL)
    shape = (-1,) + (1,) * (adv.dim() - 1)
    return torch.where(fixed.view(shape), project(adv, lo, hi), adv), fixed
