"""Floating-point error of attack input gradients, measured against a float64 reference.

For a model, float32 pixels x, labels, a loss and a precision p, :func:`input_gradient` computes
the input gradient of the loss with the model and the loss in p, and the same computation with a
float64 copy of the model (same loss). :func:`compare` turns the pair into per-example numbers
(all vectorised over the batch, no loop over examples):

* rel_err = ||g_p − g_64||₂ / ||g_64||₂ (0 if both are 0, +inf if only g_64 is 0);
* cosine = <g_p, g_64> / (||g_p||·||g_64||) (1 if both are 0, 0 if exactly one is);
* zero_grad: every entry of g_p is exactly 0; zero_logit_grad: the same for ∂L/∂z in p;
  zero_k_term: ∂L/∂z_k computed in p is exactly 0 (k the class of interest: y, or y_t);
* sign_flip: fraction of the entries with g_64 ≠ 0 where sign(g_p) ≠ sign(g_64) (an entry with
  g_p = 0 counts as flipped: PGD's sign step moves it the wrong way or not at all);
* nonfinite_grad / n_nonfinite: g_p holds NaN/±Inf, and how many entries. Such rows are flagged
  and counted, never dropped; their rel_err, cosine and sign_flip are NaN.

Gaps. Δ = z_π1 − z_π2 is the top-2 gap of the float64 logits (NaN if a logit is not finite).
The thresholds of ``docs/theory.md`` §3 ([derived]: −ln u for rounding, −ln(s/2) for underflow,
from :func:`tmifpe.losses.tmifpe.tstar.gap_thresholds`) refer to the *scaled* top-2 gap
m = c·Δ of the softmax the loss evaluates: for plain CE c = 1, so m = Δ; for MIFPE c = T/Δ, so
m = T = 1 [paper]; for T-MIFPE c = t*/Δ, so m = t* [paper]. Examples are binned by the raw Δ for
every loss, so CE and MIFPE/T-MIFPE are compared on the same points; m is reported next to it.
C&W and DLR evaluate no softmax: their scaled gap is undefined (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.losses import LossFn, LossName, get_loss, parse_loss
from tmifpe.losses.mifpe import MIFPE_T
from tmifpe.losses.scaling import guarded_gap
from tmifpe.losses.tmifpe.tstar import attack_phase, nonfinite_rows, optimal_t
from tmifpe.precision import Precision, PrecisionModel


@dataclass(frozen=True)
class InputGradient:
    """Gradient of a loss at one precision: ``grad`` (N, D) float64 (exact copy of the dtype's
    values), ``logit_grad`` (N, K) float64, ``logits`` (N, K) float64 copy of the dtype's logits."""

    grad: Tensor
    logit_grad: Tensor
    logits: Tensor


def input_gradient(
    model: PrecisionModel, x: Tensor, labels: Tensor, loss_fn: LossFn, *,
    targets: Tensor | None = None,
) -> InputGradient:
    """∇_x Σ_i L(model(x)_i) computed entirely in ``model.dtype`` [the attack's gradient]
    (autocast family: forward and loss under autocast, as the engines compute them).

    The leaf is x in float64 (float32 under autocast, which casts only float32 tensors): casting
    float32 pixels to float64 is exact, so the model sees the same rounded input as from
    float32, and the dtype's gradient is upcast exactly.
    """
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32 pixels, got {x.dtype}")
    # autocast casts only float32 tensors to the low dtype: its leaf is the float32 pixels
    leaf_dtype = torch.float32 if model.precision.autocast else torch.float64
    leaf = x.detach().to(leaf_dtype).requires_grad_(True)
    with torch.enable_grad():
        logits = model(leaf)
        with model.autocast(leaf.device):  # amp-*: the loss as autocast computes it
            loss = loss_fn(logits, labels, targets=targets)
        g_x, g_z = torch.autograd.grad(loss.sum(), [leaf, logits])
    return InputGradient(g_x.detach().flatten(1).to(torch.float64),
                         g_z.detach().to(torch.float64), logits.detach().to(torch.float64))


@dataclass(frozen=True)
class GradientErrors:
    """Per-example error of g_p against g_64; every field is an (N,) CPU tensor."""

    gap: Tensor  # float64 Δ of the float64 logits, NaN if non-finite
    scaled_gap: Tensor  # float64 m = c·Δ of the loss (NaN for C&W/DLR)
    phase: Tensor  # int64 Phase of the float64 logits
    rel_err: Tensor
    cosine: Tensor
    sign_flip: Tensor
    zero_grad: Tensor
    zero_logit_grad: Tensor
    zero_k_term: Tensor  # ∂L/∂z_k exactly 0 in the dtype (k = label, or target)
    nonfinite_grad: Tensor
    n_nonfinite: Tensor  # int64 NaN/±Inf entries of g_p
    nonfinite_logits: Tensor  # float64 or dtype logits hold NaN/±Inf
    ref_zero: Tensor  # g_64 exactly zero

    def frame(self) -> pl.DataFrame:
        """One row per example, one column per field."""
        return pl.DataFrame({k: getattr(self, k).numpy() for k in self.__dataclass_fields__})


def top2(logits64: Tensor) -> Tensor:
    """(N,) Δ = z_π1 − z_π2 of float64 logits, NaN for rows with a NaN/±Inf logit."""
    vals = logits64.topk(2, dim=1).values
    gap = vals[:, 0] - vals[:, 1]
    return torch.where(nonfinite_rows(logits64), torch.nan, gap)


def scaled_gap(
    logits64: Tensor, labels: Tensor, loss: str | LossName, *, targets: Tensor | None = None,
    tstar_rule: str = "coef", dtype: torch.dtype = torch.float64,
) -> Tensor:
    """(N,) scaled top-2 gap m = c·Δ the loss's softmax sees [paper formulas, see module doc].

    CE: m = Δ; MIFPE: m = Δ·T/Δ_g; T-MIFPE: m = Δ·t*/Δ_g, with Δ_g the guarded gap of
    :func:`tmifpe.losses.scaling.guarded_gap` at ``dtype`` (so m = T or t*; m = Δ on a tie,
    where c = 1) and t* from :func:`optimal_t` (``dtype``: rule "cap" and the tie guard). C&W
    and DLR: NaN.
    """
    name = parse_loss(loss) if isinstance(loss, str) else loss
    gap = top2(logits64)
    if name is LossName.CE:
        return gap
    delta, tie = guarded_gap(logits64, dtype)
    if name is LossName.MIFPE:
        return torch.where(tie, gap, gap * MIFPE_T / delta)
    if name is LossName.TMIFPE:
        t = optimal_t(logits64, labels, targets=targets, rule=tstar_rule, dtype=dtype)
        return torch.where(tie, gap, gap * t / delta)
    return torch.full_like(gap, torch.nan)


def compare(
    g_p: InputGradient, g_64: InputGradient, labels: Tensor, loss: str | LossName, *,
    targets: Tensor | None = None, tstar_rule: str = "coef", dtype: torch.dtype = torch.float64,
) -> GradientErrors:
    """Per-example errors of ``g_p`` against the float64 reference ``g_64`` (module doc)."""
    a, b = g_p.grad, g_64.grad
    finite = torch.isfinite(a)
    n_bad = (~finite).sum(dim=1)
    bad = n_bad > 0
    a0 = torch.where(finite, a, 0.0)
    na, nb = a0.norm(dim=1), b.norm(dim=1)
    diff = (a0 - b).norm(dim=1)
    rel = torch.where(nb > 0, diff / nb.clamp(min=torch.finfo(torch.float64).tiny),
                      torch.where(na > 0, math.inf, 0.0))
    dot = (a0 * b).sum(dim=1)
    denom = (na * nb).clamp(min=torch.finfo(torch.float64).tiny)
    cos = torch.where((na > 0) & (nb > 0), dot / denom,
                      torch.where((na == 0) & (nb == 0), 1.0, 0.0))
    ref_nz = b != 0
    flips = ((torch.sign(a0) != torch.sign(b)) & ref_nz).sum(dim=1).to(torch.float64)
    n_ref = ref_nz.sum(dim=1)
    flip = torch.where(n_ref > 0, flips / n_ref.clamp(min=1), torch.nan)
    nan = torch.tensor(torch.nan, dtype=torch.float64)
    k = (labels if targets is None else targets).long()
    z64 = g_64.logits
    return GradientErrors(
        gap=top2(z64),
        scaled_gap=scaled_gap(z64, labels, loss, targets=targets, tstar_rule=tstar_rule,
                              dtype=dtype),
        phase=attack_phase(z64, labels, targets=targets),
        rel_err=torch.where(bad, nan, rel), cosine=torch.where(bad, nan, cos),
        sign_flip=torch.where(bad, nan, flip),
        zero_grad=(a == 0).all(dim=1), zero_logit_grad=(g_p.logit_grad == 0).all(dim=1),
        zero_k_term=g_p.logit_grad.gather(1, k[:, None]).squeeze(1) == 0,
        nonfinite_grad=bad, n_nonfinite=n_bad.to(torch.int64),
        nonfinite_logits=nonfinite_rows(z64) | nonfinite_rows(g_p.logits),
        ref_zero=(b == 0).all(dim=1),
    )


def gradient_errors(
    model: nn.Module, x: Tensor, labels: Tensor, loss: str | LossName, precision: Precision, *,
    targets: Tensor | None = None, tstar_rule: str = "coef",
) -> GradientErrors:
    """One-call form: g_p with ``PrecisionModel(model, precision)``, g_64 with a float64 copy."""
    fn = get_loss(loss, tstar_rule=tstar_rule)
    g_p = input_gradient(PrecisionModel(model, precision), x, labels, fn, targets=targets)
    g_64 = input_gradient(PrecisionModel(model, Precision.FP64), x, labels, fn, targets=targets)
    return compare(g_p, g_64, labels, loss, targets=targets, tstar_rule=tstar_rule,
                   dtype=precision.dtype)


def take_rows(g: InputGradient, rows: Tensor) -> InputGradient:
    """The rows ``rows`` of every field."""
    return InputGradient(g.grad[rows], g.logit_grad[rows], g.logits[rows])

