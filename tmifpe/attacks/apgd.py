"""l∞ APGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", Algorithm 1) with an injected loss.

[APGD paper] Step size η = 2·eps at the start, one per example; momentum α = 0.75 (α = 1 at the
first step):

    z^{k+1} = P(x^k + η·sign(∇f(x^k)))
    x^{k+1} = P(x^k + α·(z^{k+1} − x^k) + (1 − α)·(x^k − x^{k−1}))

with P the projection onto eps-ball ∩ [0,1]. Checkpoints w_j = ⌈p_j·N⌉ with p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (:func:`paper_checkpoints`; the engine runs
AutoAttack's integer version, :func:`checkpoints`, see below). At w_j the step of an example
is halved when

    (a) #{i ∈ [w_{j−1}, w_j) : f(x^{i+1}) > f(x^i)} < ρ·(w_j − w_{j−1}),  ρ = 0.75, or
    (b) η was not halved at w_{j−1} and f_max did not increase since w_{j−1},

and a halved example restarts from its best point x_max (with the gradient stored there).

Choices made here [derived here], where the paper leaves room or this project differs:

* **Progress measure f.** ``Progress.LOSS`` judges (a)/(b) and x_max by the attack loss itself,
  as APGD does for CE and DLR. Losses that rescale the logits per iterate (MIFPE: c = 1/Δ;
  T-MIFPE: c = t*/Δ, t* recomputed every step) pin the scaled top-2 gap near a constant, so their
  values at two iterates are not comparable (an unsuccessful iterate's T-MIFPE value depends on
  the logit *ratios* a_j, hardly on how close the attack is to success). ``Progress.MARGIN``
  judges by the C&W margin of the same forward pass, max_{j≠y} z_j − z_y (untargeted) or
  z_t − max_{j≠t} z_j (targeted): raw logits, no exponentials, so it is comparable across
  iterates, does not saturate in low precision (CE's value rounds to 0 once the gap exceeds
  −ln u, e.g. 5.5 in bf16), and is > 0 exactly at success. It costs no extra pass. The default
  (``progress=None``) is :func:`default_progress`: the margin for MIFPE/T-MIFPE, the loss for
  CE, C&W, DLR and any other loss.
* **Freeze on success** like :func:`tmifpe.attacks.pgd.run_pgd`: an example leaves the run at the
  first iterate that is a confirmed success (:func:`tmifpe.attacks.runs.step_verdicts`: the
  attack dtype and a fresh fp32 pass both misclassify it); a dtype-only hit is counted and the
  run goes on (targeted runs too, as in run_pgd); a missed hit (fp32 only) is counted and kept
  only with ``keep_missed_hits`` (:data:`tmifpe.attacks.runs.KEEP_MISSED_HITS`).
* **Non-finite steps.** The input gradient is taken on the power-of-two-rescaled logit gradient
  (:func:`tmifpe.attacks.runs.input_gradient`); a step whose loss or gradient is still NaN/Inf
  is taken in a random sign direction (so the example is not stuck on a recomputation that
  repeats the NaN), and it counts as no progress (f = −∞, so it is never x_max and never an
  increase). The stored "gradient" is the sign used.
* **GPU-ready.** Per-row state lives in full-size device buffers; conditional updates are
  ``torch.where``s, counters stay on the device until the end of the run; the step's one
  synchronising op is the compaction of the live rows.
* **Random start** [APGD code]: x0 + eps·u/‖u‖∞, u ~ U[−1,1]^d, drawn on the CPU generator,
  then projected; this is APGD's start, not the eps-ball-vertex start of run_pgd.
* **After a restart from x_max** the momentum term is reset (x^{k−1} := x_max) and the next
  increase is judged against f(x_max); the reference code instead keeps x^{k−1} of the abandoned
  iterate. (b) may fire at the first checkpoint (the paper's condition; the code skips it), and
  (a) is the paper's strict "<" (the code halves also when the count equals ρ·interval).
* **Checkpoints** follow AutoAttack's code (pyautoattack ``APGDAttack.attack_single_run``), not
  the paper's ⌈p_j·N⌉: first interval ⌊0.22·N⌋, then each interval shrinks by ⌊0.03·N⌋ down to
  ⌊0.06·N⌋ (each at least 1). Both agree for N = 100 (22, 41, 57, 70, 80, 87, 93, 99), and
  this engine is compared against AutoAttack at the suite's budgets (20: code 4, 7, 9, 10, 11,
  …, 20; paper formula 5, 9, 12, 14, 16, 18, 19, 20), so the code's schedule is the one run
  (:func:`checkpoints`; the paper's is :func:`paper_checkpoints`).
* **Budget.** N iterations = N + 1 forward passes and N backward passes per example (the last
  iterate is only checked), as in run_pgd. Robust examples return x_max of their last run (the
  highest-progress iterate, including the last one); successful ones the successful iterate.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from tmifpe.attacks.projection import linf_box, project
from tmifpe.attacks.runs import (
    KEEP_MISSED_HITS,
    LOSS_SCALE,
    PGDResult,
    RunCounters,
    RunState,
    check_class_range,
    check_inputs,
    check_loss_scale,
    confirms_with_reference,
    fallback_generator,
    input_gradient,
    loss_context,
    run_restarts_and_targets,
    step_direction,
    step_verdicts,
)
from tmifpe.losses import LossFn
from tmifpe.losses.mifpe import mifpe_loss
from tmifpe.losses.tmifpe import tmifpe_loss
from tmifpe.precision import PrecisionModel

P1_HUNDREDTHS = 22  # p_1 = 0.22
DECREMENT_HUNDREDTHS = 3  # 0.03
MIN_INTERVAL_HUNDREDTHS = 6  # 0.06


class Progress(str, enum.Enum):
    """What APGD's step-size rule and x_max compare between iterates (module docstring)."""

    LOSS = "loss"
    MARGIN = "margin"


@dataclass(frozen=True)
class APGDConfig:
    eps: float
    steps: int  # N iterations
    rho: float = 0.75
    momentum: float = 0.75
    initial_step: float = 2.0  # η_0 = initial_step · eps
    restarts: int = 1
    targeted: bool = False
    n_targets: int = 9
    progress: Progress | None = None  # None: default_progress(loss) when run
    seed: int = 0
    keep_missed_hits: bool = KEEP_MISSED_HITS  # fp32-only hits frozen as successes
    loss_scale: float = LOSS_SCALE  # constant factor on the loss before backward (amp-fp16)

    def __post_init__(self) -> None:
        check_loss_scale(self.loss_scale)
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {self.restarts}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if not self.initial_step > 0.0:
            raise ValueError(f"initial_step must be > 0, got {self.initial_step}")
        if self.targeted and self.n_targets < 1:
            raise ValueError(f"n_targets must be >= 1 for a targeted attack, got {self.n_targets}")
        if self.progress is not None and not isinstance(self.progress, Progress):
            object.__setattr__(self, "progress", _parse_progress(self.progress))


def _parse_progress(name: object) -> Progress:
    try:
        return Progress(name)
    except ValueError:
        allowed = ", ".join(p.value for p in Progress)
        raise ValueError(f"unknown progress measure {name!r}; expected one of: {allowed}") from None


def checkpoint_fractions() -> tuple[int, ...]:
    """[APGD paper] p_1, p_2, … ≤ 1 in hundredths: p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) → 22, 41, 57, 70, 80, 87, 93, 99."""
    out, prev, cur = [], 0, P1_HUNDREDTHS
    while cur <= 100:
        out.append(cur)
        prev, cur = cur, cur + max(cur - prev - DECREMENT_HUNDREDTHS, MIN_INTERVAL_HUNDREDTHS)
    return tuple(out)


def paper_checkpoints(steps: int) -> tuple[int, ...]:
    """[APGD paper] Iterations w_j = ⌈p_j·N⌉ (distinct, ≥ 1); exact integer arithmetic.
    N = 100 → (22, 41, 57, 70, 80, 87, 93, 99); N = 20 → (5, 9, 12, 14, 16, 18, 19, 20)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ws = (-(-p * steps // 100) for p in checkpoint_fractions())  # ceil(p·N/100)
    return tuple(sorted({w for w in ws if w >= 1}))


def checkpoints(steps: int) -> tuple[int, ...]:
    """[AutoAttack code] Iterations at which the step may be halved, as pyautoattack computes
    them: first interval k = max(⌊0.22·N⌋, 1), then k ← max(k − max(⌊0.03·N⌋, 1),
    max(⌊0.06·N⌋, 1)), up to N. N = 100 → (22, 41, 57, 70, 80, 87, 93, 99);
    N = 20 → (4, 7, 9, 10, 11, …, 20). Integer arithmetic on hundredths (⌊p·N⌋ exactly)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    k = max(P1_HUNDREDTHS * steps // 100, 1)
    decrement = max(DECREMENT_HUNDREDTHS * steps // 100, 1)
    minimum = max(MIN_INTERVAL_HUNDREDTHS * steps // 100, 1)
    out, w = [], k
    while w <= steps:
        out.append(w)
        k = max(k - decrement, minimum)
        w += k
    return tuple(out)


def default_progress(loss_fn: LossFn) -> Progress:
    """``Progress.MARGIN`` for the scaled losses MIFPE and T-MIFPE (their scale changes per
    iterate, see the module docstring), ``Progress.LOSS`` for every other loss (CE, C&W, DLR:
    AutoAttack's choice)."""
    fn = getattr(loss_fn, "func", loss_fn)  # get_loss("tmifpe") is a functools.partial
    return Progress.MARGIN if fn in (mifpe_loss, tmifpe_loss) else Progress.LOSS


def run_apgd(
    model: PrecisionModel,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    config: APGDConfig,
    *,
    attack_mask: Tensor | None = None,
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PGDResult:
    """APGD on the examples selected by ``attack_mask`` (default: all); see module docstring.

    Same contract as :func:`tmifpe.attacks.pgd.run_pgd`: ``targets`` (N, T) is required when
    ``config.targeted`` (see :func:`tmifpe.attacks.pgd.attack_targets`); restarts and targets
    run one after another, each only on the still-robust examples; x_adv is float32.
    """
    check_inputs(x, y, targets, config.targeted)
    if attack_mask is not None and (attack_mask.shape != x.shape[:1]
                                    or attack_mask.dtype != torch.bool):
        raise ValueError(f"attack_mask must be bool of shape ({x.shape[0]},), got "
                         f"{attack_mask.dtype} {tuple(attack_mask.shape)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    if config.progress is None:
        config = dataclasses.replace(config, progress=default_progress(loss_fn))

    def single_run(x0: Tensor, y0: Tensor, tgt: Tensor | None, state: RunState,
                   idx: Tensor) -> None:
        _single_run(model, x0, y0, tgt, loss_fn, config, gen, state, idx)

    return run_restarts_and_targets(x, y, targets, attack_mask, config.restarts,
                                    config.targeted, single_run)


def uniform_start(x0: Tensor, eps: float, lo: Tensor, hi: Tensor,
                  gen: torch.Generator) -> Tensor:
    """[APGD code] x0 + eps·u/‖u‖∞ per example, u ~ U[−1,1]^d (CPU generator), projected."""
    u = 2.0 * torch.rand(x0.shape, generator=gen, device=gen.device) - 1.0
    u = u / (u.flatten(1).abs().amax(dim=1).view(-1, *[1] * (u.dim() - 1)) + 1e-12)
    return project(x0 + eps * u.to(x0), lo, hi)


def progress_margin(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
    """C&W margin in float64, maximised: max_{j≠y} z_j − z_y, or z_t − max_{j≠t} z_j."""
    z = logits.detach().double()
    k = labels if targets is None else targets
    z_k = z.gather(1, k[:, None]).squeeze(1)
    other = z.scatter(1, k[:, None], float("-inf")).amax(dim=1)
    return other - z_k if targets is None else z_k - other


def _single_run(
    model: PrecisionModel,
    x0: Tensor,
    y: Tensor,
    tgt: Tensor | None,
    loss_fn: LossFn,
    cfg: APGDConfig,
    gen: torch.Generator,
    acc: RunState,
    idx: Tensor,
) -> None:
    """One APGD run of ``cfg.steps`` iterations on rows ``idx`` (CPU) of the batch. Per-row
    state lives in full-size device buffers indexed by the live rows; conditional updates are
    ``torch.where``s, so the step's only host sync is the compaction ``keep.nonzero()``."""
    n, dev = x0.shape[0], x0.device
    view = (-1, *[1] * (x0.dim() - 1))
    lo, hi = linf_box(x0, cfg.eps)
    x_cur = uniform_start(x0, cfg.eps, lo, hi, gen)
    x_prev, x_best = x_cur.clone(), x_cur.clone()
    grad, grad_best = torch.zeros_like(x0), torch.zeros_like(x0)
    step = torch.full((n,), cfg.initial_step * cfg.eps, dtype=torch.float64, device=dev)
    f_cur = torch.full((n,), float("-inf"), dtype=torch.float64, device=dev)
    f_best, f_check = f_cur.clone(), f_cur.clone()
    n_incr = torch.zeros(n, dtype=torch.int64, device=dev)
    halved = torch.zeros(n, dtype=torch.bool, device=dev)  # halved at the previous checkpoint
    marks, last_mark = set(checkpoints(cfg.steps)), 0
    fallback = fallback_generator(gen, dev)
    cnt = RunCounters(n, dev)
    low = None
    live = torch.arange(n, device=dev)  # rows of x0 still attacked
    for k in range(cfg.steps + 1):
        need_grad = k < cfg.steps
        xl = x_cur[live]
        yl, tl = y[live], None if tgt is None else tgt[live]
        xk = xl.requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            logits = model(xk)  # (n_live, K), attack dtype
        if k == 0:
            check_class_range(logits.shape[1], y, tgt)
            low = confirms_with_reference(model, logits)
        hit, dtype_only, missed = step_verdicts(model, logits, xl.detach(), yl, lo[live],
                                                hi[live], keep_missed=cfg.keep_missed_hits)
        cnt.add(cnt.fwd, live, 2 if low else 1)
        cnt.add(cnt.dtype_only, live, dtype_only)
        cnt.add(cnt.missed, live, missed)
        cnt.mark_success(live, hit, k)
        keep = ~hit
        pos = keep.nonzero().squeeze(1)  # the step's one host sync
        if pos.numel() == 0:
            break
        with torch.set_grad_enabled(need_grad):
            with loss_context(model, dev):  # amp-*: the loss as autocast computes it
                loss = loss_fn(logits, yl, targets=tl)
            g = (input_gradient(loss, logits, xk, keep, loss_scale=cfg.loss_scale)
                 if need_grad else None)
        if cfg.progress is Progress.LOSS:
            f = loss.detach().double()
        else:
            f = progress_margin(logits, yl, tl)
        f = torch.where(torch.isfinite(f), f, float("-inf"))  # NaN/Inf: no progress
        xl, loss = xl.detach(), loss.detach()
        if pos.numel() < live.numel():  # frozen rows leave
            live, f, xl, loss = live[pos], f[pos], xl[pos], loss[pos]
            g = None if g is None else g[pos]
        if need_grad:
            cnt.add(cnt.bwd, live, 1)
            ok = cnt.count_degenerate(live, g, loss)
            f = torch.where(ok, f, float("-inf"))  # a non-finite step is no progress
        # bookkeeping [APGD paper]: increases since the last checkpoint, and x_max
        if k > 0:
            n_incr.index_add_(0, live, (f > f_cur[live]).long())
        better = f > f_best[live]
        x_best.index_copy_(0, live, torch.where(better.view(view), xl, x_best[live]))
        f_best.index_copy_(0, live, torch.where(better, f, f_best[live]))
        f_cur.index_copy_(0, live, torch.where(torch.isfinite(f), f, f_cur[live]))
        if k == 0:
            f_check.index_copy_(0, live, f)
        if not need_grad:
            break
        grad.index_copy_(0, live, step_direction(g, ok, fallback))  # the sign actually used
        grad_best.index_copy_(0, live, torch.where(better.view(view), grad[live],
                                                   grad_best[live]))
        if k in marks:
            _checkpoint(cfg.rho * (k - last_mark), live, n_incr, halved, f_best, f_check, step,
                        (x_cur, x_prev, x_best, grad, grad_best, f_cur))
            last_mark = k
        alpha = 1.0 if k == 0 else cfg.momentum
        xc, xp, eta = x_cur[live], x_prev[live], step[live].float().view(view)
        lol, hil = lo[live], hi[live]
        z = project(xc + eta * grad[live].sign(), lol, hil)
        x_new = project(xc + alpha * (z - xc) + (1.0 - alpha) * (xc - xp), lol, hil)
        x_prev.index_copy_(0, live, xc)
        x_cur.index_copy_(0, live, x_new)
    # successful rows: their hit iterate (x_cur, frozen since); the others x_max of this run
    cnt.flush(acc, idx, x_cur, x_best, tgt)


def _checkpoint(
    threshold: float, live: Tensor, n_incr: Tensor, halved: Tensor, f_best: Tensor,
    f_check: Tensor, step: Tensor, buffers: tuple[Tensor, ...],
) -> None:
    """[APGD paper] Halve η where (a) increases < ρ·interval or (b) not halved last time and no
    new best; those rows restart from x_max (momentum reset). Updates the tensors in place,
    with ``torch.where`` over the live rows (no host sync)."""
    x_cur, x_prev, x_best, grad, grad_best, f_cur = buffers
    cond_a = n_incr[live].double() < threshold
    cond_b = ~halved[live] & (f_best[live] <= f_check[live])
    halve = cond_a | cond_b
    hv = halve.view(-1, *[1] * (x_cur.dim() - 1))
    step.index_copy_(0, live, torch.where(halve, step[live] / 2.0, step[live]))
    xb = x_best[live]
    x_cur.index_copy_(0, live, torch.where(hv, xb, x_cur[live]))
    x_prev.index_copy_(0, live, torch.where(hv, xb, x_prev[live]))
    grad.index_copy_(0, live, torch.where(hv, grad_best[live], grad[live]))
    f_cur.index_copy_(0, live, torch.where(halve, f_best[live], f_cur[live]))
    halved.index_copy_(0, live, halve)
    f_check.index_copy_(0, live, f_best[live])
    n_incr.index_fill_(0, live, 0)
