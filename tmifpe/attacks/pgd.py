"""l∞ PGD with momentum, freeze-on-success, restarts and targets; the loss is injected.

[paper, MIFPE code] random start on the eps-ball surface; step η_k from a schedule over the
budget N; APGD-style momentum (α = 1 at the first step, then ``momentum``); projection onto
eps-ball ∩ [0,1]; an example is frozen at the first iterate that is misclassified (in the attack
dtype); targeted: one full run per target (clean ranks 2…n_targets+1) on still-robust points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tmifpe.attacks.projection import linf_box, project, random_start
from tmifpe.attacks.schedule import Schedule, step_size
from tmifpe.losses import LossFn
from tmifpe.precision import PrecisionModel

NEVER = -1  # first_success_iter of an example never misclassified


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


@dataclass(frozen=True)
class PGDResult:
    """Per-example outcome of one attack (all tensors have leading dim N, on CPU).

    ``success`` is the attack's own verdict in its dtype; the fp32/fp64 verdicts come from
    :mod:`tmifpe.verify`. ``first_success_iter`` is the iterate index (0 = random start, N = last
    iterate) of the first success within its run, ``NEVER`` if none. ``x_adv`` is float32: the
    successful iterate, or the last iterate of the last run for robust examples.
    """

    x_adv: Tensor  # (N, C, H, W) float32
    success: Tensor  # (N,) bool
    first_success_iter: Tensor  # (N,) int64
    success_target: Tensor  # (N,) int64, target class of the successful run, -1 otherwise
    n_forward: Tensor  # (N,) int64, forward passes this example took part in
    n_backward: Tensor  # (N,) int64, backward passes this example took part in
    zero_grad_steps: Tensor  # (N,) int64, steps whose input gradient was exactly zero
    nonfinite_steps: Tensor  # (N,) int64, steps with NaN/Inf loss or gradient (step skipped)


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
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32 pixels in [0,1], got {x.dtype}")
    if config.targeted and targets is None:
        raise ValueError("a targeted attack needs targets of shape (N, n_targets)")
    if y.shape != x.shape[:1] or y.dtype != torch.int64:
        raise ValueError(f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} "
                         f"{tuple(y.shape)}")
    if targets is not None and (targets.dim() != 2 or targets.shape[0] != x.shape[0]):
        raise ValueError(f"targets must have shape ({x.shape[0]}, n_targets), got "
                         f"{tuple(targets.shape)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    n = x.shape[0]
    state = _State.empty(x.cpu())
    active = torch.ones(n, dtype=torch.bool) if attack_mask is None else attack_mask.clone()
    target_cols = range(targets.shape[1]) if config.targeted else [None]
    for _ in range(config.restarts):
        for col in target_cols:
            idx = (active & ~state.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            tgt = None if col is None else targets[idx, col]
            _single_run(model, x[idx], y[idx], tgt, loss_fn, config, gen, state, idx)
    return state.freeze()


@dataclass
class _State:
    """Mutable per-example accumulators of :func:`run_pgd` (internal)."""

    x_adv: Tensor
    success: Tensor
    first: Tensor
    target: Tensor
    fwd: Tensor
    bwd: Tensor
    zero: Tensor
    nonfinite: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> _State:
        n = x.shape[0]

        def z() -> Tensor:
            return torch.zeros(n, dtype=torch.int64)

        return cls(x.clone(), torch.zeros(n, dtype=torch.bool), torch.full((n,), NEVER),
                   torch.full((n,), -1), z(), z(), z(), z())

    def freeze(self) -> PGDResult:
        return PGDResult(self.x_adv, self.success, self.first, self.target, self.fwd, self.bwd,
                         self.zero, self.nonfinite)


def _single_run(
    model: PrecisionModel,
    x0: Tensor,
    y: Tensor,
    tgt: Tensor | None,
    loss_fn: LossFn,
    cfg: PGDConfig,
    gen: torch.Generator,
    state: _State,
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
            _check_class_range(logits.shape[1], y, tgt)
        state.fwd[idx[live]] += 1
        hit = (logits.detach().argmax(dim=1) != y[live]).cpu()  # index bookkeeping on CPU
        _record_success(state, idx[live[hit]], x_cur[live[hit]], k, tgt, live[hit])
        if k == cfg.steps:
            break
        keep = ~hit
        if not keep.any():
            return
        loss = loss_fn(logits, y[live], targets=None if tgt is None else tgt[live])
        (grad,) = torch.autograd.grad(loss[keep.to(loss.device)].sum(), xk)
        live, grad = live[keep], grad[keep.to(grad.device)].float()
        state.bwd[idx[live]] += 1  # frozen rows are outside loss[keep]: no gradient for them
        _count_degenerate(state, idx[live], grad, loss.detach()[keep.to(loss.device)])
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        eta = step_size(cfg.schedule, k, cfg.steps, cfg.eps)
        alpha = 1.0 if k == 0 else cfg.momentum
        xc, xp = x_cur[live], x_prev[live]
        z = project(xc + eta * grad.sign(), lo[live], hi[live])
        x_new = project(xc + alpha * (z - xc) + (1.0 - alpha) * (xc - xp), lo[live], hi[live])
        x_prev[live] = xc
        x_cur[live] = x_new
    # examples never misclassified keep the last iterate of the last run
    state.x_adv[idx[live]] = x_cur[live].cpu()


def _check_class_range(num_classes: int, y: Tensor, tgt: Tensor | None) -> None:
    """Labels/targets must index the model's K logits (checked once per run, at step 0)."""
    for name, t in (("label", y), ("target", tgt)):
        if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
            raise ValueError(f"{name} {bad} out of range: the model has {num_classes} classes, "
                             f"expected 0..{num_classes - 1}")


def _record_success(
    state: _State, rows: Tensor, x_hit: Tensor, k: int, tgt: Tensor | None, local: Tensor
) -> None:
    if rows.numel() == 0:
        return
    state.success[rows] = True
    state.x_adv[rows] = x_hit.cpu()
    state.first[rows] = k
    if tgt is not None:
        state.target[rows] = tgt[local].cpu()


def _count_degenerate(state: _State, rows: Tensor, grad: Tensor, loss: Tensor) -> None:
    flat = grad.flatten(1)
    finite = torch.isfinite(flat).all(dim=1) & torch.isfinite(loss)
    zero = finite & (flat == 0).all(dim=1)
    state.nonfinite[rows] += (~finite).long().cpu()  # counters live on the CPU
    state.zero[rows] += zero.long().cpu()
