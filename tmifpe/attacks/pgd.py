"""l∞ PGD with momentum, freeze-on-success, restarts and targets; the loss is injected.

[paper, MIFPE code] random start on the eps-ball surface; step η_k from a schedule over the
budget N; APGD-style momentum (α = 1 at the first step, then ``momentum``); projection onto
eps-ball ∩ [0,1]; targeted: one full run per target (clean ranks 2…n_targets+1) on still-robust
points. [derived here] An example is frozen at the first iterate that is a confirmed success
(:func:`tmifpe.attacks.runs.step_verdicts`: finite attack-dtype logits misclassify it *and* a
fresh fp32 pass of its float32 iterate does); an iterate misclassified in the attack dtype only
is counted (``dtype_only_hits``) and the attack goes on from it; one fp32 misclassifies but the
attack dtype does not is counted too (``missed_hits``) and, by default, not kept
(``keep_missed_hits``, see :data:`tmifpe.attacks.runs.KEEP_MISSED_HITS`). The input gradient
is taken with the logit gradient rescaled by a power of two
(:func:`tmifpe.attacks.runs.input_gradient`: exact, same sign, no fp16 overflow from the scaled
losses' c); a step whose loss or gradient is still NaN/Inf is counted and taken in a random
sign direction (:func:`tmifpe.attacks.runs.step_direction`), so no example is stuck. The step
reads nothing back to the host; its one synchronising op is the compaction of the live rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tmifpe.attacks.projection import linf_box, project, random_start
from tmifpe.attacks.runs import (
    KEEP_MISSED_HITS,
    LOSS_SCALE,
    NEVER,
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
from tmifpe.attacks.schedule import Schedule, step_size
from tmifpe.losses import LossFn
from tmifpe.precision import PrecisionModel

# NEVER and PGDResult are defined with the engine-shared pieces and re-exported here
__all__ = ["NEVER", "PGDConfig", "PGDResult", "attack_targets", "run_pgd"]

@dataclass(frozen=True)
class PGDConfig:
    eps: float
    steps: int
    schedule: Schedule = Schedule.COSINE
    momentum: float = 0.75
    restarts: int = 1
    targeted: bool = False
    n_targets: int = 9
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
        if self.targeted and self.n_targets < 1:
            raise ValueError(f"n_targets must be >= 1 for a targeted attack, got {self.n_targets}")


def attack_targets(clean_logits: Tensor, n_targets: int) -> Tensor:
    """Targets = classes ranked 2…n+1 by clean logits, n = min(n_targets, K−1). (N, n)."""
    n = min(n_targets, clean_logits.shape[1] - 1)
    return clean_logits.argsort(dim=1, descending=True)[:, 1 : n + 1]


def run_pgd(
    model: PrecisionModel,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    config: PGDConfig,
    *,
    attack_mask: Tensor | None = None,
    targets: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PGDResult:
    """Attack the examples selected by ``attack_mask`` (default: all); see module docstring.

    ``targets`` (N, T) is required when ``config.targeted``; see :func:`attack_targets`.
    Restarts and targets run one after another, each only on the still-robust examples.
    """
    check_inputs(x, y, targets, config.targeted)
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)

    def single_run(x0: Tensor, y0: Tensor, tgt: Tensor | None, state: RunState,
                   idx: Tensor) -> None:
        _single_run(model, x0, y0, tgt, loss_fn, config, gen, state, idx)

    return run_restarts_and_targets(x, y, targets, attack_mask, config.restarts,
                                    config.targeted, single_run)


def _single_run(
    model: PrecisionModel,
    x0: Tensor,
    y: Tensor,
    tgt: Tensor | None,
    loss_fn: LossFn,
    cfg: PGDConfig,
    gen: torch.Generator,
    state: RunState,
    idx: Tensor,
) -> None:
    """One PGD run of ``cfg.steps`` steps on the rows ``idx`` (CPU) of the batch; updates
    ``state`` once, at the end. The step's only host sync is the compaction of the live rows
    (``keep.nonzero()``); counters stay on the device until then."""
    n, dev = x0.shape[0], x0.device
    lo, hi = linf_box(x0, cfg.eps)
    x_cur = random_start(x0, cfg.eps, lo, hi, gen)
    x_prev = x_cur.clone()
    fallback = fallback_generator(gen, dev)
    cnt = RunCounters(n, dev)
    low = None  # attack dtype is not fp32: one fp32 confirmation forward per iterate
    live = torch.arange(n, device=dev)  # rows of x0 still being attacked
    for k in range(cfg.steps + 1):
        full = live.numel() == n  # no row frozen: whole buffers, no gathers
        last = k == cfg.steps
        xl = x_cur.clone() if full else x_cur[live]
        yl, tl = (y, tgt) if full else (y[live], None if tgt is None else tgt[live])
        lol, hil = (lo, hi) if full else (lo[live], hi[live])
        xk = xl.requires_grad_(not last)
        with torch.set_grad_enabled(not last):
            logits = model(xk)  # (n_live, K) in the attack dtype
        if k == 0:
            check_class_range(logits.shape[1], y, tgt)
            low = confirms_with_reference(model, logits)
        hit, dtype_only, missed = step_verdicts(model, logits, xl.detach(), yl, lol, hil,
                                                keep_missed=cfg.keep_missed_hits)
        cnt.add(cnt.fwd, live, 2 if low else 1)
        cnt.add(cnt.dtype_only, live, dtype_only)
        cnt.add(cnt.missed, live, missed)
        cnt.mark_success(live, hit, k)
        if last:
            break
        keep = ~hit
        pos = keep.nonzero().squeeze(1)  # the step's one host sync
        if pos.numel() == 0:
            break
        with torch.enable_grad():
            with loss_context(model, dev):  # amp-*: the loss as autocast computes it
                loss = loss_fn(logits, yl, targets=tl)
            grad = input_gradient(loss, logits, xk, keep, loss_scale=cfg.loss_scale)
        xl, loss = xl.detach(), loss.detach()
        if pos.numel() < live.numel():  # frozen rows leave (hit rows had no gradient)
            live, grad, loss, xl, lol, hil = (t[pos] for t in (live, grad, loss, xl, lol, hil))
        cnt.add(cnt.bwd, live, 1)
        ok = cnt.count_degenerate(live, grad, loss)
        direction = step_direction(grad, ok, fallback)
        eta = step_size(cfg.schedule, k, cfg.steps, cfg.eps)
        alpha = 1.0 if k == 0 else cfg.momentum
        xp = x_prev[live]
        z = project(xl + eta * direction, lol, hil)
        x_new = project(xl + alpha * (z - xl) + (1.0 - alpha) * (xl - xp), lol, hil)
        x_prev.index_copy_(0, live, xl)
        x_cur.index_copy_(0, live, x_new)
    # a successful row's x_cur is its hit iterate (it left ``live``); the others' the last one
    cnt.flush(state, idx, x_cur, x_cur, tgt)
