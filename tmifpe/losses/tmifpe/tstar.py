"""The per-example scale t* of T-MIFPE, for each attack phase.

T-MIFPE [paper] attacks with CE((t*/Δ)·z, k), where Δ = z_π1 − z_π2 is the detached top-2 gap and
k the class of interest (true label y in phases (i)/(ii), target in (iii)/(iv)). With
a_j = (z_π1 − z_j)/Δ (so a_π2 = 1) this module computes t*, always in float64 on detached logits:

* phases (i)/(iv), k on top [derived]: t* = argmax_t h(t), h(t) = t·S/(1+S),
  S(t) = Σ_{j≠π1} e^{−t·a_j}. h can be bimodal, so a grid over log t brackets the global maximum
  and a safeguarded Newton iteration refines the best two candidates.
* phases (ii)/(iii), k not on top [open in the paper; candidate rules, see ``PHASE23_RULES``]:
  "mifpe" t = 1; "coef" t = argmax_t (t/Δ)·p_k(t); "cap" t = τ_round(dtype)/a_k.

Degenerate rows get t = 1: a top-2 tie (the guard of :func:`tmifpe.losses.scaling.guarded_gap`:
Δ = 0, including all-equal logits, or Δ below the compute dtype's smallest normal) and rows with a
NaN or ±Inf logit (count them with :func:`nonfinite_rows`). Δ is that same guarded gap, so t* is
chosen for the Δ the loss divides by. The derivation is in ``docs/theory.md``.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from tmifpe.choices import check_choice
from tmifpe.losses.scaling import guarded_gap


class Phase(enum.IntEnum):
    """Attack phase of one example at one iteration [paper]."""

    UNTARGETED_UNSUCCESSFUL = 1  # (i)  y is top-1
    UNTARGETED_SUCCESSFUL = 2  # (ii) y not top-1
    TARGETED_UNSUCCESSFUL = 3  # (iii) target not top-1
    TARGETED_SUCCESSFUL = 4  # (iv) target is top-1


PHASE23_RULES = ("mifpe", "coef", "cap")

_W0_INV_E = 0.2784645427610738  # W0(1/e): lower bound on t* and on max h in phases (i)/(iv)
_FINE_STEP = 0.1  # log-t grid step inside the proven bracket of t*
_COARSE_STEP = 0.5  # log-t grid step of the safety net over [1e-2, 1e3]
_MAX_EXPONENT = 700.0  # e^{-700} is a normal float64: no subnormal slow path
_MAX_RATIO = 1e100  # clamp for gap ratios; (1e100)^2 · e^{-700} is still negligible
_TOL = 1e-14  # absolute tolerance on log t of the Newton refinement
_MAX_ITER = 100
_ACCEL_CHECK_EVERY = 4  # Newton rounds between convergence checks off the CPU (host syncs)
_CHUNK_ELEMENTS = 1 << 18  # elements per evaluation block (keeps blocks in cache)
_CAP_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def gap_thresholds(dtype: torch.dtype) -> tuple[float, float]:
    """(rounding, underflow) limits of a scaled logit gap m in ``dtype`` [derived].

    rounding = −ln u, u = eps/2 the unit roundoff: for m > rounding, 1 + e^{−m} rounds to 1.
    underflow = −ln(s/2), s the smallest subnormal: for m > underflow, e^{−m} rounds to 0.
    fp64 36.74/745.13, fp32 16.64/103.97, bf16 5.55/92.88, fp16 7.62/17.33.
    """
    if dtype not in _CAP_DTYPES:
        allowed = ", ".join(str(d) for d in _CAP_DTYPES)
        raise ValueError(f"unsupported compute dtype {dtype!r}; expected one of: {allowed}")
    fi = torch.finfo(dtype)
    return -math.log(fi.eps / 2), -math.log(fi.smallest_normal) - math.log(fi.eps) + math.log(2)


def nonfinite_rows(logits: Tensor) -> Tensor:
    """(N,) bool: rows of ``logits`` holding a NaN or ±Inf (they get t* = 1)."""
    return ~torch.isfinite(logits.detach()).all(dim=1)


def attack_phase(logits: Tensor, labels: Tensor, *, targets: Tensor | None = None) -> Tensor:
    """(N,) int64 :class:`Phase` values [paper]; "top-1" is ``argmax`` (first index on ties)."""
    _validate(logits, labels, targets)
    k = labels if targets is None else targets
    top = logits.detach().argmax(dim=1) == k  # (N, K) -> (N,)
    if targets is None:
        hit, miss = Phase.UNTARGETED_UNSUCCESSFUL, Phase.UNTARGETED_SUCCESSFUL
    else:
        hit, miss = Phase.TARGETED_SUCCESSFUL, Phase.TARGETED_UNSUCCESSFUL
    return torch.where(top, int(hit), int(miss)).to(torch.int64)


def optimal_t(
    logits: Tensor,
    labels: Tensor,
    *,
    targets: Tensor | None = None,
    rule: str = "coef",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(N,) float64 detached t* for T-MIFPE's loss CE((t*/Δ)·z, k) [paper].

    Phases (i)/(iv): global argmax of h(t) = t·S/(1+S) [derived]. Phases (ii)/(iii): ``rule``
    "mifpe" (t = 1) [paper], "coef" (argmax (t/Δ)·p_k) or "cap" (t·a_k = −ln u(dtype)) [derived].
    ``dtype`` is the attack's compute dtype (default: ``logits.dtype``): the "cap" rule and the
    tie guard use it. Rows with a tie (:func:`tmifpe.losses.scaling.guarded_gap`: Δ below the
    dtype's smallest normal) or a non-finite logit get t* = 1.
    """
    _validate(logits, labels, targets)
    check_choice(rule, PHASE23_RULES, "phase (ii)/(iii) rule")
    if dtype is not None or rule == "cap":  # the compute dtype only matters to "cap"
        tau = gap_thresholds(logits.dtype if dtype is None else dtype)[0]
    with torch.no_grad():
        z = logits.detach().to(torch.float64)
        bad = nonfinite_rows(z)
        z = torch.where(bad[:, None], torch.zeros_like(z), z)
        k = (labels if targets is None else targets).long()
        top2, idx = z.topk(2, dim=1)  # (N, K) -> (N, 2)
        delta, tie = guarded_gap(logits, logits.dtype if dtype is None else dtype)
        ok = ~tie & ~bad
        on_top = idx[:, 0] == k
        d = top2[:, :1] - z  # (N, K) gaps to the top-1, >= 0
        t = torch.ones_like(delta)
        rows = (ok & on_top).nonzero().squeeze(1)
        if rows.numel():
            a = d[rows] / delta[rows, None]
            a.scatter_(1, idx[rows, :1], math.inf)  # the top-1 class is not part of S
            t[rows] = _argmax_h(a)
        rows = (ok & ~on_top).nonzero().squeeze(1)
        if rows.numel() and rule != "mifpe":
            gap_k = d[rows].gather(1, k[rows, None]).squeeze(1)  # z_π1 − z_k >= Δ > 0
            ratio_k = delta[rows] / gap_k  # 1/a_k
            t[rows] = ratio_k * (_argmax_coef(d[rows] / gap_k[:, None]) if rule == "coef" else tau)
    return t


def _validate(logits: Tensor, labels: Tensor, targets: Tensor | None) -> None:
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (N, K) tensor, got {logits.dtype} {logits.shape}")
    n, num_classes = logits.shape
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got K={num_classes}")
    for name, v in (("labels", labels), ("targets", targets)):
        if v is None:
            continue
        if v.shape != (n,) or v.is_floating_point() or v.is_complex():
            raise ValueError(f"{name} must be an integer ({n},) tensor, got {v.dtype} {v.shape}")
        # the range is read on the CPU only: on an accelerator each read synchronises it with
        # the host at every attack step; the engines (tmifpe.attacks.runs.check_class_range)
        # and the API check it once per run, and an out-of-range index fails in the gathers
        if n and v.device.type == "cpu" and (int(v.min()) < 0 or int(v.max()) >= num_classes):
            raise ValueError(f"{name} out of range [0, {num_classes})")


@functools.lru_cache(maxsize=64)
def _h_grid(num_classes: int) -> tuple[float, ...]:
    """log-t grid: fine on the proven bracket [W0(1/e), T_hi(K)], coarse on [1e-2, 1e3].

    h(t) < t and h(1+W0(1/e)) >= W0(1/e) give t* > W0(1/e); h(t) <= t(K−1)e^{−t} gives
    t* < T_hi, the root > 1 of t·e^{−t} = W0(1/e)/(K−1) [derived].
    """
    t_hi, c = 2.0, math.log((num_classes - 1) / _W0_INV_E)
    for _ in range(60):  # fixed point t = ln((K−1)/W0(1/e)) + ln t, a contraction for t > 1
        t_hi = c + math.log(t_hi)
    lo, hi = math.log(_W0_INV_E) - _FINE_STEP, math.log(t_hi) + _FINE_STEP
    fine = torch.arange(lo, hi + _FINE_STEP, _FINE_STEP, dtype=torch.float64)
    coarse = torch.arange(math.log(1e-2), math.log(1e3) + _COARSE_STEP, _COARSE_STEP)
    coarse = coarse.to(torch.float64)
    return tuple(torch.cat([fine, coarse[(coarse < lo) | (coarse > hi)]]).sort().values.tolist())


def _basis(ratios: Tensor) -> tuple[Tensor, Tensor]:
    """(r, [1, r, r²]) for :func:`_moments`; +inf in ``ratios`` marks an excluded class."""
    excluded = torch.isinf(ratios)
    r = ratios.clamp(max=_MAX_RATIO)
    basis = torch.stack([torch.ones_like(r), r, r * r], dim=2).masked_fill_(excluded[..., None], 0)
    return r, basis  # (n, K), (n, K, 3)


def _moments(r: Tensor, basis: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Q = Σ_j e^{−s·r_j}, mean and variance of r under weights ∝ e^{−s·r_j}, per (row, point).

    ``r``, ``basis`` from :func:`_basis`; ``scale`` (n, C) -> three (n, C).
    """
    neg_scale = -scale
    rows = max(1, _CHUNK_ELEMENTS // (scale.shape[1] * r.shape[1]))
    out = []
    for i in range(0, r.shape[0], rows):  # fixed-size blocks of rows, not one per example
        x = neg_scale[i : i + rows, :, None] * r[i : i + rows, None, :]  # (b, C, K)
        x = x.clamp_(min=-_MAX_EXPONENT).exp_()
        out.append(torch.bmm(x, basis[i : i + rows]))  # (b, C, K) @ (b, K, 3) -> (b, C, 3)
    m = torch.cat(out) if len(out) > 1 else out[0]
    q = m[..., 0]
    mean = m[..., 1] / q
    return q, mean, (m[..., 2] / q - mean * mean).clamp(min=0.0)


def _h_derivatives(rb: tuple[Tensor, Tensor], u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ψ(u) = ln h(e^u) and its first two u-derivatives; rb = _basis(a − 1), u (n, C) [derived].

    S = e^{−t}·Q, ā = 1 + mean(b); ψ' = 1 − t·ā/(1+S);
    ψ'' = −t·ā/(1+S) + t²·Var/(1+S) − t²·ā²·S/(1+S)².
    """
    t = u.exp()
    q, mean_b, var = _moments(*rb, t)
    log_s = q.log() - t
    s = log_s.exp()
    a_bar = 1.0 + mean_b
    psi = u + log_s - torch.nn.functional.softplus(log_s)
    ta = t * a_bar / (1.0 + s)
    d2 = -ta + t * t * var / (1.0 + s) - ta * ta * s
    return psi, 1.0 - ta, d2


def _argmax_h(a: Tensor) -> Tensor:
    """(n,) global maximiser of h(t) = t·S/(1+S), a (n, K) with +inf at the top-1 [derived]."""
    rb = _basis(a - 1.0)  # a − 1 >= 0, exactly 0 for the runner-up
    grid = torch.tensor(_h_grid(a.shape[1]), dtype=a.dtype, device=a.device)
    u = grid.expand(a.shape[0], -1)  # (n, G)
    psi, d1, _ = _h_derivatives(rb, u)
    # cells with ψ' going from + to − contain a local max; rank them by a quadratic model
    # (linear ψ' in the cell) and refine the best two: h can be bimodal.
    left, right = d1[:, :-1], d1[:, 1:]
    step = u[:, 1:] - u[:, :-1]
    cell = (left > 0) & (right <= 0)
    frac = (left / (left - right)).nan_to_num(0.5).clamp(0.0, 1.0)
    score = torch.where(cell, psi[:, :-1] + 0.5 * left * frac * step, -math.inf)
    best = score.topk(min(2, score.shape[1]), dim=1).indices  # (n, C)
    lo, hi = u.gather(1, best), u.gather(1, best + 1)
    x0 = lo + frac.gather(1, best) * (hi - lo)
    fallback = grid[psi.argmax(dim=1)][:, None].expand_as(x0)  # no sign change: keep the grid max
    lo, hi, x0 = (torch.where(cell.gather(1, best), v, fallback) for v in (lo, hi, x0))
    x = _newton_max(lambda v: _h_derivatives(rb, v)[1:], lo, hi, x0)
    x = torch.cat([x, fallback[:, :1]], dim=1)  # the grid maximum competes too
    value = _h_derivatives(rb, x)[0]
    return x.gather(1, value.argmax(dim=1, keepdim=True)).squeeze(1).exp()


def _coef_derivatives(rb: tuple[Tensor, Tensor], v: Tensor) -> tuple[Tensor, Tensor]:
    """d/dv, d²/dv² of ln g_B at s = e^v, r_j = (z_π1 − z_j)/(z_π1 − z_k) [derived].

    ψ' = 1 − s + s·r̄, ψ'' = −s + s·r̄ − s²·Var(r), weights p = softmax(−s·r).
    """
    s = v.exp()
    _, mean_r, var = _moments(*rb, s)
    return 1.0 - s + s * mean_r, -s + s * mean_r - s * s * var


def _argmax_coef(r: Tensor) -> Tensor:
    """(n,) s* = t*·a_k maximising (t/Δ)·p_k(t); ln g_B is strictly concave [derived].

    ψ'(s=1) = r̄ >= 0 and ψ'(s = 1 + (K−1)/e) <= 0, so s* lies between them.
    """
    n = r.shape[0]
    lo = torch.zeros(n, 1, dtype=r.dtype, device=r.device)
    hi = torch.full_like(lo, math.log1p((r.shape[1] - 1) / math.e))
    x0 = torch.full_like(lo, math.log1p(_W0_INV_E)).minimum(hi)
    rb = _basis(r)
    return _newton_max(lambda v: _coef_derivatives(rb, v), lo, hi, x0).squeeze(1).exp()


def _newton_max(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]], lo: Tensor, hi: Tensor, x: Tensor
) -> Tensor:
    """Safeguarded Newton on ψ' = 0 inside [lo, hi] (ψ'(lo) >= 0 >= ψ'(hi)), elementwise.

    Bisection replaces a Newton step that leaves the bracket, is not an ascent direction of a
    concave model, or is not shorter than half the previous step (the rtsafe safeguard).
    """
    prev = hi - lo
    done = torch.zeros_like(x, dtype=torch.bool)
    every = convergence_check_every(x.device)
    for i in range(_MAX_ITER):
        d1, d2 = fn(x)
        lo = torch.where(d1 >= 0, x, lo)
        hi = torch.where(d1 <= 0, x, hi)
        step = d1 / d2
        new = x - step
        # a step that lands just outside by rounding (the bracket end is the root) is accepted
        good = (d2 < 0) & (new >= lo - _TOL) & (new <= hi + _TOL)
        good &= (2 * step.abs() <= prev.abs()) | (step.abs() <= _TOL)
        new = torch.where(good, new.clamp(lo, hi), 0.5 * (lo + hi))
        new = torch.where(done, x, new)  # converged entries stay put
        prev, x = new - x, new
        done |= prev.abs() <= _TOL
        if (i + 1) % every == 0 and bool(done.all()):
            break
    return x


def convergence_check_every(device: torch.device) -> int:
    """Newton rounds between two convergence checks of :func:`_newton_max`: every round on the
    CPU (reading a CPU tensor is free), every :data:`_ACCEL_CHECK_EVERY` th elsewhere (each
    check synchronises the accelerator with the host). Converged entries stay put, so the
    result does not depend on it [derived]."""
    return 1 if device.type == "cpu" else _ACCEL_CHECK_EVERY
