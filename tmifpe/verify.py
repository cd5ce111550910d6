"""Re-verification of adversarial examples: constraints and fresh forward passes at fp32/fp64.

Never trust an attack's own success flag: an example counts as broken only if its stored float32
``x_adv`` lies in the eps-ball and in [0,1] and a fresh fp32 forward pass returns finite logits
whose argmax is not the label. Non-finite verdict logits are no misclassification (``argmax`` of
an all-NaN row is 0): they are reported on their own (``nonfinite_fp32``/``nonfinite_fp64``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from tmifpe.precision import PrecisionModel


@dataclass(frozen=True)
class Verdict:
    """Per-example verification (N,) tensors."""

    valid: Tensor  # bool: inside eps-ball (checked in float64) and inside [0,1]
    pred_fp32: Tensor  # int64
    pred_fp64: Tensor  # int64
    margin_fp32: Tensor  # float64: z_y − max_{j≠y} z_j at fp32 (< 0: misclassified)
    margin_fp64: Tensor  # float64
    nonfinite_fp32: Tensor  # bool: NaN/±Inf in the fp32 logits
    nonfinite_fp64: Tensor  # bool: NaN/±Inf in the fp64 logits

    def broken(self, y: Tensor, *, fp64: bool = False) -> Tensor:
        """valid ∧ finite logits ∧ argmax ≠ y, at fp32 (or fp64)."""
        pred = self.pred_fp64 if fp64 else self.pred_fp32
        nonfinite = self.nonfinite_fp64 if fp64 else self.nonfinite_fp32
        return self.valid & ~nonfinite & (pred != y)

    def cpu(self) -> Verdict:
        return Verdict(*(getattr(self, f.name).cpu() for f in fields(self)))

    @staticmethod
    def cat(parts: Sequence[Verdict]) -> Verdict:
        """Row-wise concatenation of the verdicts of consecutive batches."""
        return Verdict(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Verdict)))


def clean_correct(logits: Tensor, y: Tensor) -> Tensor:
    """Finite logits whose argmax is the label, ``(N, K) -> (N,)`` bool: a point whose clean
    logits are NaN/±Inf is not clean-correct (``argmax`` of an all-NaN row is 0)."""
    return torch.isfinite(logits).all(dim=1) & (logits.argmax(dim=1) == y)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y − max_{j≠y} z_j, ``(N, K) -> (N,)`` in float64."""
    z = logits.double()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    onehot = torch.zeros_like(z, dtype=torch.bool).scatter_(1, y[:, None], True)
    return z_y - z.masked_fill(onehot, float("-inf")).amax(dim=1)


def in_threat_model(x0: Tensor, x_adv: Tensor, eps: float) -> Tensor:
    """|x_adv − x0|∞ ≤ eps (exact, in float64) and x_adv ∈ [0,1]; ``(N,)`` bool."""
    diff = (x_adv.double() - x0.double()).abs().flatten(1).amax(dim=1)
    flat = x_adv.flatten(1)
    box = (flat >= 0).all(dim=1) & (flat <= 1).all(dim=1)
    return (diff <= eps) & box & torch.isfinite(flat).all(dim=1)


@torch.no_grad()
def verify(
    ref32: PrecisionModel, ref64: PrecisionModel, x0: Tensor, x_adv: Tensor, y: Tensor, eps: float
) -> Verdict:
    """Fresh forward passes of float32 ``x_adv`` at fp32 and fp64, plus the constraint check."""
    logits32 = ref32(x_adv)
    logits64 = ref64(x_adv)
    return Verdict(
        valid=in_threat_model(x0, x_adv, eps),
        pred_fp32=logits32.argmax(dim=1),
        pred_fp64=logits64.argmax(dim=1),
        margin_fp32=margin(logits32, y),
        margin_fp64=margin(logits64, y),
        nonfinite_fp32=~torch.isfinite(logits32).all(dim=1),
        nonfinite_fp64=~torch.isfinite(logits64).all(dim=1),
    )
