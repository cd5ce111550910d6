"""Agreement of measured zero gradients with the thresholds of docs/theory.md §3.

Each check returns a JSON-ready dict with its points, fractions, rule and a verdict ("agrees",
"disagrees", "too few points"); :func:`verdicts` runs all of them on an example frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl
import torch
from torch import Tensor

from tmifpe.losses.tmifpe.tstar import Phase, gap_thresholds
from tmifpe.precision import Precision

# Agreement check tolerances (see ce_zero_gradient_verdict).
MIN_POINTS = 10
LOW_ZERO_MAX = 0.05
HIGH_ZERO_MIN = 0.9


def ce_zero_gradient_verdict(
    gap: Tensor, zero_grad: Tensor, phase: Tensor, precision: Precision, *,
    zero_logit_grad: Tensor | None = None, min_points: int = MIN_POINTS,
    low_max: float = LOW_ZERO_MAX, high_min: float = HIGH_ZERO_MIN,
) -> dict[str, object]:
    """Does untargeted CE's exactly-zero input gradient follow the thresholds of theory §3?

    Points: phase (i) (y is top-1 of the float64 logits), finite Δ. (r, u) =
    ``gap_thresholds(dtype)`` [derived]. Theory: for Δ < r, 1 + S > 1 in the dtype, so
    ∂L/∂z_y ≠ 0 and the gradient is not zero; for Δ > u every gap exceeds u, every
    e^{−gap} underflows and the whole gradient is 0. The check [defined here]:
    "agrees" iff zero fraction below r ≤ ``low_max`` and above u ≥ ``high_min`` (and above >
    below); "too few points" if either side has fewer than ``min_points`` examples; else
    "disagrees". Between r and u theory only predicts a wrong direction: reported, not judged.
    With ``zero_logit_grad`` the same fractions for ∂L/∂z are reported as ``logit_zero_frac_*``
    (an input gradient can also vanish by underflow in the backward pass through the network).
    """
    r, u = gap_thresholds(precision.dtype)
    ok = torch.isfinite(gap) & (phase == int(Phase.UNTARGETED_UNSUCCESSFUL))
    sides = {"below": ok & (gap < r), "between": ok & (gap >= r) & (gap <= u),
             "above": ok & (gap > u)}
    out: dict[str, object] = {"threshold_round": round(r, 4), "threshold_underflow": round(u, 4)}
    out.update(_fractions(zero_grad, sides))
    if zero_logit_grad is not None:  # separates softmax underflow from backprop underflow
        logit = _fractions(zero_logit_grad, sides)
        out.update({f"logit_{k}": v for k, v in logit.items() if k.startswith("zero_frac")})
    out["verdict"] = _judge(out, min_points, low_max, high_min)
    out["rule"] = (f"phase (i) CE: zero fraction <= {low_max} for gap < {r:.2f} and >= {high_min}"
                   f" for gap > {u:.2f}, each side >= {min_points} points")
    return out


def ce_true_class_term_verdict(
    gap: Tensor, zero_k_term: Tensor, phase: Tensor, precision: Precision, num_classes: int, *,
    min_points: int = MIN_POINTS, low_max: float = LOW_ZERO_MAX, high_min: float = HIGH_ZERO_MIN,
) -> dict[str, object]:
    """Is CE's true-class term ∂L/∂z_y = p_y − 1 rounded to exactly 0 where theory §3 says?

    Phase (i), finite Δ. [derived] 1 − p_y = S/(1+S), S = Σ_{j≠y} e^{−(z_y − z_j)}, is lost
    iff 1 + S rounds to 1, i.e. S < u, r = −ln u. Since e^{−Δ} ≤ S ≤ (K−1)·e^{−Δ}: for Δ < r
    it is never lost; for Δ > r + ln(K−1) it is always lost; in between it depends on the other
    gaps (reported, not judged). The check [defined here]: "agrees" iff the zero fraction is
    ≤ ``low_max`` below r and ≥ ``high_min`` above r + ln(K−1); "too few points" if either side
    has fewer than ``min_points``; else "disagrees".
    """
    r = gap_thresholds(precision.dtype)[0]
    hi = r + math.log(num_classes - 1)
    ok = torch.isfinite(gap) & (phase == int(Phase.UNTARGETED_UNSUCCESSFUL))
    sides = {"below": ok & (gap < r), "between": ok & (gap >= r) & (gap <= hi),
             "above": ok & (gap > hi)}
    out: dict[str, object] = {"threshold_round": round(r, 4), "threshold_sure": round(hi, 4)}
    out.update(_fractions(zero_k_term, sides))
    out["verdict"] = _judge(out, min_points, low_max, high_min)
    out["rule"] = (f"phase (i) CE: dL/dz_y == 0 fraction <= {low_max} for gap < {r:.2f} and "
                   f">= {high_min} for gap > {hi:.2f}, each side >= {min_points} points")
    return out


def _fractions(flag: Tensor, sides: dict[str, Tensor]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, mask in sides.items():
        n = int(mask.sum())
        out[f"n_{name}"] = n
        out[f"zero_frac_{name}"] = round(float(flag[mask].double().mean()), 6) if n else None
    return out


def _judge(out: dict[str, object], min_points: int, low_max: float, high_min: float) -> str:
    """"too few points" / "agrees" (below ≤ low_max, above ≥ high_min, above > below) /
    "disagrees", from the ``_fractions`` entries of ``out``."""
    lo, hi = out["zero_frac_below"], out["zero_frac_above"]
    if not isinstance(lo, float) or not isinstance(hi, float):
        return "too few points"
    if min(out["n_below"], out["n_above"]) < min_points:  # type: ignore[call-overload]
        return "too few points"
    return "agrees" if lo <= low_max and hi >= high_min and hi > lo else "disagrees"


def scaled_loss_verdict(
    gap: Tensor, zero_grad: Tensor, *, min_points: int = MIN_POINTS, low_max: float = LOW_ZERO_MAX,
) -> dict[str, object]:
    """MIFPE/T-MIFPE keep the scaled gap at T or t* ≈ 1 [paper], below every threshold, so their
    gradient should never be exactly 0, even where CE's is. The check [defined here]: over all
    points with finite Δ > 0, "agrees" iff the zero fraction ≤ ``low_max``, and also separately
    over Δ > the smallest underflow threshold measured (17.33, fp16) when there are points."""
    ok = torch.isfinite(gap) & (gap > 0)
    n = int(ok.sum())
    frac = float(zero_grad[ok].double().mean()) if n else None
    out: dict[str, object] = {"n": n, "zero_frac": None if frac is None else round(frac, 6)}
    if n < min_points:
        out["verdict"] = "too few points"
    else:
        out["verdict"] = "agrees" if frac is not None and frac <= low_max else "disagrees"
    out["rule"] = f"zero fraction <= {low_max} over all points with gap > 0 (>= {min_points})"
    return out


def verdicts(
    examples: pl.DataFrame, precisions: Sequence[Precision], num_classes: int,
) -> list[dict[str, object]]:
    """Agreement checks on all point sets pooled: :func:`ce_zero_gradient_verdict` and
    :func:`ce_true_class_term_verdict` per pure precision (not the autocast family: its CE is
    computed in fp32, the thresholds of theory §3 do not apply), :func:`scaled_loss_verdict`
    per precision × MIFPE/T-MIFPE × (un)targeted."""

    def col(frame: pl.DataFrame, name: str, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(frame[name].to_numpy().copy()).to(dtype)

    out: list[dict[str, object]] = []
    for p in precisions:
        f = examples.filter((pl.col("loss") == "ce") & ~pl.col("targeted")
                            & (pl.col("precision") == p.value))
        if f.height and not p.autocast:  # theory §3's CE thresholds: pure dtypes only
            gap, phase = col(f, "gap", torch.float64), col(f, "phase", torch.int64)
            v = ce_zero_gradient_verdict(gap, col(f, "zero_grad", torch.bool), phase, p,
                                         zero_logit_grad=col(f, "zero_logit_grad", torch.bool))
            out.append({"check": "ce_zero_gradient", "loss": "ce", "targeted": False,
                        "precision": p.value, **v})
            v = ce_true_class_term_verdict(gap, col(f, "zero_k_term", torch.bool), phase, p,
                                           num_classes)
            out.append({"check": "ce_true_class_term", "loss": "ce", "targeted": False,
                        "precision": p.value, **v})
        for loss in ("mifpe", "tmifpe"):
            for targeted in (False, True):
                f = examples.filter((pl.col("loss") == loss) & (pl.col("targeted") == targeted)
                                    & (pl.col("precision") == p.value))
                if f.height:
                    v = scaled_loss_verdict(col(f, "gap", torch.float64),
                                            col(f, "zero_grad", torch.bool))
                    out.append({"check": "scaled_no_zero_gradient", "loss": loss,
                                "targeted": targeted, "precision": p.value, **v})
    return out
