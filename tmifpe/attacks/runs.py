"""What the PGD and APGD engines share: the per-example result, its accumulators, input checks,
the success rule, and the loop over restarts and targets (each run only on the still-robust
examples)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tmifpe.precision import PrecisionModel

NEVER = -1  # first_success_iter of an example never misclassified


def batch_seed(seed: int, targeted: bool, batch: int) -> int:
    """Seed of the random starts of batch ``batch`` of an attack. It depends on nothing else, so
    every loss, precision and engine starts from the same points: only the compared factor
    differs between two runs."""
    return (seed * 1_000_003 + 2 * batch + int(targeted)) % (2**63)


@dataclass(frozen=True)
class PGDResult:
    """Per-example outcome of one attack (all tensors have leading dim N, on CPU).

    ``success`` is the confirmed success of :func:`confirmed_hits` (attack-dtype logits finite
    and misclassifying, and a fresh fp32 pass of the float32 iterate misclassifying it); the
    final fp32/fp64 verdicts come from :mod:`tmifpe.verify`. ``dtype_only_hits`` counts the
    iterates the attack dtype called misclassified but fp32 did not (the attack went on).
    ``first_success_iter`` is the iterate index (0 = random start, N = last
    iterate) of the first success within its run, ``NEVER`` if none. ``x_adv`` is float32: the
    successful iterate, or the engine's chosen iterate of the last run for robust examples.
    """

    x_adv: Tensor  # (N, C, H, W) float32
    success: Tensor  # (N,) bool
    first_success_iter: Tensor  # (N,) int64
    success_target: Tensor  # (N,) int64, target class of the successful run, -1 otherwise
    n_forward: Tensor  # (N,) int64, forward passes this example took part in
    n_backward: Tensor  # (N,) int64, backward passes this example took part in
    zero_grad_steps: Tensor  # (N,) int64, steps whose input gradient was exactly zero
    nonfinite_steps: Tensor  # (N,) int64, steps with NaN/Inf loss or gradient (step skipped)
    dtype_only_hits: Tensor  # (N,) int64, iterates misclassified in the attack dtype only


@dataclass
class RunState:
    """Mutable per-example accumulators over the runs of one attack (CPU tensors)."""

    x_adv: Tensor
    success: Tensor
    first: Tensor
    target: Tensor
    fwd: Tensor
    bwd: Tensor
    zero: Tensor
    nonfinite: Tensor
    dtype_only: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> RunState:
        n = x.shape[0]

        def z() -> Tensor:
            return torch.zeros(n, dtype=torch.int64)

        return cls(x.clone(), torch.zeros(n, dtype=torch.bool), torch.full((n,), NEVER),
                   torch.full((n,), -1), z(), z(), z(), z(), z())

    def freeze(self) -> PGDResult:
        return PGDResult(self.x_adv, self.success, self.first, self.target, self.fwd, self.bwd,
                         self.zero, self.nonfinite, self.dtype_only)

    def record_success(self, rows: Tensor, x_hit: Tensor, k: int, tgt: Tensor | None,
                       local: Tensor) -> None:
        """Rows ``rows`` (CPU) succeeded at iterate ``k`` with ``x_hit``; ``local`` indexes
        ``tgt`` (the run's targets) for the same rows."""
        if rows.numel() == 0:
            return
        self.success[rows] = True
        self.x_adv[rows] = x_hit.cpu()
        self.first[rows] = k
        if tgt is not None:
            self.target[rows] = tgt[local].cpu()

    def count_degenerate(self, rows: Tensor, grad: Tensor, loss: Tensor) -> Tensor:
        """Count steps whose gradient is exactly zero, or whose loss/gradient is NaN/Inf;
        returns the (n,) bool mask of the finite ones (the others' step is skipped)."""
        flat = grad.flatten(1)
        finite = torch.isfinite(flat).all(dim=1) & torch.isfinite(loss)
        zero = finite & (flat == 0).all(dim=1)
        self.nonfinite[rows] += (~finite).long().cpu()  # counters live on the CPU
        self.zero[rows] += zero.long().cpu()
        return finite


@torch.no_grad()
def confirmed_hits(
    model: PrecisionModel, logits: Tensor, x: Tensor, y: Tensor, lo: Tensor, hi: Tensor,
) -> tuple[Tensor, Tensor]:
    """(success, dtype_only) (n,) bool on ``logits.device``, for iterates ``x`` (float32).

    [derived here] Success: the attack-dtype ``logits`` are finite and misclassify, ``x`` lies in
    [lo, hi] (eps-ball ∩ [0,1]; true by projection, checked), and a fresh forward of float32
    ``x`` through ``model.reference`` (fp32, the project's verdict precision) gives finite
    logits that misclassify. At fp32 the attack pass is that pass: no second forward. Only the
    candidate rows go through the reference, so the extra cost is one forward per candidate.
    dtype_only: a candidate fp32 rejects (the attack dtype's verdict alone).
    """
    z = logits.detach()
    candidate = torch.isfinite(z).all(dim=1) & (z.argmax(dim=1) != y)
    candidate &= ((x >= lo) & (x <= hi)).flatten(1).all(dim=1)
    if z.dtype == torch.float32 or not bool(candidate.any()):
        return candidate, torch.zeros_like(candidate)
    rows = candidate.nonzero().squeeze(1)
    z32 = model.reference(x[rows])
    success = candidate.clone()
    success[rows] = torch.isfinite(z32).all(dim=1) & (z32.argmax(dim=1) != y[rows])
    return success, candidate & ~success


def check_inputs(x: Tensor, y: Tensor, targets: Tensor | None, targeted: bool) -> None:
    """One-line errors for a bad batch: dtype of x, shape/dtype of labels and targets."""
    if x.dtype != torch.float32:
        raise ValueError(f"x must be float32 pixels in [0,1], got {x.dtype}")
    if targeted and targets is None:
        raise ValueError("a targeted attack needs targets of shape (N, n_targets)")
    if y.shape != x.shape[:1] or y.dtype != torch.int64:
        raise ValueError(f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} "
                         f"{tuple(y.shape)}")
    if targets is not None and (targets.dim() != 2 or targets.shape[0] != x.shape[0]):
        raise ValueError(f"targets must have shape ({x.shape[0]}, n_targets), got "
                         f"{tuple(targets.shape)}")


def check_class_range(num_classes: int, y: Tensor, tgt: Tensor | None) -> None:
    """Labels/targets must index the model's K logits (checked once per run, at step 0)."""
    for name, t in (("label", y), ("target", tgt)):
        if t is None or not t.numel():
            continue
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"{name} {low if low < 0 else high} out of range: the model has "
                             f"{num_classes} classes, expected 0..{num_classes - 1}")


# (x rows, y rows, their targets or None, state, row indices on the CPU) -> None
SingleRun = Callable[[Tensor, Tensor, "Tensor | None", RunState, Tensor], None]


def run_restarts_and_targets(
    x: Tensor, y: Tensor, targets: Tensor | None, attack_mask: Tensor | None, restarts: int,
    targeted: bool, single_run: SingleRun,
) -> PGDResult:
    """Restarts × targets, one run after another, each on the still-robust examples of the mask
    (default: all); ``single_run`` updates the state of the rows it is given."""
    n = x.shape[0]
    state = RunState.empty(x.cpu())
    active = torch.ones(n, dtype=torch.bool) if attack_mask is None else attack_mask.cpu().clone()
    target_cols = range(targets.shape[1]) if targeted and targets is not None else [None]
    for _ in range(restarts):
        for col in target_cols:
            idx = (active & ~state.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            tgt = None if targets is None or col is None else targets[idx.to(targets.device), col]
            dev_idx = idx.to(x.device)
            single_run(x[dev_idx], y[dev_idx], tgt, state, idx)
    return state.freeze()
