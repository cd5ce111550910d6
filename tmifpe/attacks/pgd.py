"""l∞ PGD with momentum, freeze-on-success, restarts and targets; the loss is injected.

[paper, MIFPE code] random start on the eps-ball surface; step η_k from a schedule over the
budget N; APGD-style momentum (α = 1 at the first step, then ``momentum``); projection onto
eps-ball ∩ [0,1]; targeted: one full run per target (clean ranks 2…n_targets+1) on still-robust
points. [derived here] An example is frozen at the first iterate that is a confirmed success
(:func:`tmifpe.attacks.runs.confirmed_hits`: finite attack-dtype logits misclassify it *and* a
fresh fp32 pass of its float32 iterate does); an iterate misclassified in the attack dtype only
is counted (``dtype_only_hits``) and the attack goes on from it. A step whose loss or gradient
is NaN/Inf is skipped: the iterate and its momentum stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tmifpe.attacks.projection import linf_box, project, random_start
from tmifpe.attacks.runs import (
    NEVER,
    PGDResult,
    RunState,
    check_class_range,
    check_inputs,
    confirmed_hits,
    run_restarts_and_targets,
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

    def __post_init__(self) -> None:
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
    """One PGD run of ``cfg.steps`` steps on the rows ``idx`` of the batch; updates ``state``."""
    lo, hi = linf_box(x0, cfg.eps)
    x_cur = random_start(x0, cfg.eps, lo, hi, gen)
    x_prev = x_cur.clone()
    live = torch.arange(x0.shape[0])  # rows of x0 still being attacked
    for k in range(cfg.steps + 1):
        xk = x_cur[live].requires_grad_(k < cfg.steps)
        with torch.set_grad_enabled(k < cfg.steps):
            logits = model(xk)  # (n_live, K) in the attack dtype
        if k == 0:
            check_class_range(logits.shape[1], y, tgt)
        state.fwd[idx[live]] += 1
        dev_live = live.to(x0.device)
        hit, dtype_only = confirmed_hits(model, logits, x_cur[dev_live], y[dev_live],
                                         lo[dev_live], hi[dev_live])
        hit, dtype_only = hit.cpu(), dtype_only.cpu()  # index bookkeeping on CPU
        state.dtype_only[idx[live]] += dtype_only.long()
        state.record_success(idx[live[hit]], x_cur[live[hit]], k, tgt, live[hit])
        if k == cfg.steps:
            break
        keep = ~hit
        if not keep.any():
            return
        loss = loss_fn(logits, y[live], targets=None if tgt is None else tgt[live])
        (grad,) = torch.autograd.grad(loss[keep.to(loss.device)].sum(), xk)
        live, grad = live[keep], grad[keep.to(grad.device)].float()
        state.bwd[idx[live]] += 1  # frozen rows are outside loss[keep]: no gradient for them
        ok = state.count_degenerate(idx[live], grad, loss.detach()[keep.to(loss.device)])
        step = live[ok.cpu()]  # rows whose step is taken; the others stay where they are
        grad = grad[ok]
        eta = step_size(cfg.schedule, k, cfg.steps, cfg.eps)
        alpha = 1.0 if k == 0 else cfg.momentum
        xc, xp = x_cur[step], x_prev[step]
        z = project(xc + eta * grad.sign(), lo[step], hi[step])
        x_new = project(xc + alpha * (z - xc) + (1.0 - alpha) * (xc - xp), lo[step], hi[step])
        x_prev[step] = xc
        x_cur[step] = x_new
    # examples never misclassified keep the last iterate of the last run
    state.x_adv[idx[live]] = x_cur[live].cpu()
