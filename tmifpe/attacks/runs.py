"""What the PGD and APGD engines share: the per-example result, its accumulators, input checks,
the success rule, and the loop over restarts and targets (each run only on the still-robust
examples)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tmifpe.precision import PrecisionModel

NEVER = -1  # first_success_iter of an example never misclassified

KEEP_MISSED_HITS = False
"""Default of the engines' ``keep_missed_hits`` [derived here, decided on measurements]:
``benchmarks/results/missed_hits.json`` (``benchmarks/missed_hits.py``: digits CNNs, standard
and PGD-AT, untargeted PGD, 20 steps, eps 0.2, every loss at fp16/bf16/fp64) counts the
missed hits and runs every cell with and without keeping them. Missed hits were rare (0 at
fp16 and fp64, 0-4 per bf16 cell of 180 points) and in one cell of 30 (PGD-AT, bf16, CE) one
example that had one ended robust: keeping them would have lowered that robust accuracy by 1
point in 180 (16.67% -> 16.11%), no other. Not keeping them leaves the attack's decisions to
the attack dtype, the factor the precision study varies (keeping would hand the bf16 attack
fp32's decisions); the count is reported per example either way."""


LOSS_SCALE = 1.0
"""Default of the engines' ``loss_scale`` (:func:`input_gradient`): no loss scaling. Decided on
``benchmarks/results/amp_underflow.json`` (``benchmarks/amp_underflow.py``), see
docs/theory.md "Autocast"."""


def check_loss_scale(loss_scale: float) -> None:
    """One-line error unless ``loss_scale`` is a finite number > 0."""
    if not (isinstance(loss_scale, int | float) and 0.0 < loss_scale < float("inf")):
        raise ValueError(f"loss_scale must be a finite number > 0, got {loss_scale!r}")


def batch_seed(seed: int, targeted: bool, batch: int) -> int:
    """Seed of the random starts of batch ``batch`` of an attack. It depends on nothing else, so
    every loss, precision and engine starts from the same points: only the compared factor
    differs between two runs."""
    return (seed * 1_000_003 + 2 * batch + int(targeted)) % (2**63)


@dataclass(frozen=True)
class PGDResult:
    """Per-example outcome of one attack (all tensors have leading dim N, on CPU).

    ``success`` is the confirmed success of :func:`step_verdicts` (attack-dtype logits finite
    and misclassifying, and a fresh fp32 pass of the float32 iterate misclassifying it; with
    ``keep_missed_hits`` the fp32 pass alone); the final fp32/fp64 verdicts come from
    :mod:`tmifpe.verify`. ``dtype_only_hits`` counts the iterates the attack dtype called
    misclassified but fp32 did not (the attack went on); ``missed_hits`` the mirror: iterates
    fp32 misclassifies (finite fp32 logits, inside eps-ball ∩ [0,1]) but the attack dtype does
    not (0 at fp32, where the attack pass is the fp32 pass). ``n_forward`` counts every forward
    pass the example took part in, the fp32 confirmation passes at fp16/bf16/fp64 included (one
    per iterate there: the engines confirm every iterate, see :func:`step_verdicts`).
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
    nonfinite_steps: Tensor  # (N,) int64, steps with NaN/Inf loss or gradient (random step)
    dtype_only_hits: Tensor  # (N,) int64, iterates misclassified in the attack dtype only
    missed_hits: Tensor  # (N,) int64, iterates misclassified by the fp32 pass only


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
    missed: Tensor

    @classmethod
    def empty(cls, x: Tensor) -> RunState:
        n = x.shape[0]

        def z() -> Tensor:
            return torch.zeros(n, dtype=torch.int64)

        return cls(x.clone(), torch.zeros(n, dtype=torch.bool), torch.full((n,), NEVER),
                   torch.full((n,), -1), z(), z(), z(), z(), z(), z())

    def freeze(self) -> PGDResult:
        return PGDResult(self.x_adv, self.success, self.first, self.target, self.fwd, self.bwd,
                         self.zero, self.nonfinite, self.dtype_only, self.missed)

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


@torch.no_grad()
def step_verdicts(
    model: PrecisionModel, logits: Tensor, x: Tensor, y: Tensor, lo: Tensor, hi: Tensor, *,
    keep_missed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(success, dtype_only, missed) (n,) bool on ``logits.device`` for iterates ``x``
    (float32), with no host synchronisation (the engines' per-step rule).

    [derived here] candidate: the attack-dtype ``logits`` are finite and misclassify and ``x``
    lies in [lo, hi]; fp32: a fresh forward of float32 ``x`` through ``model.reference`` gives
    finite logits that misclassify (same box check). At fp16/bf16/fp64 *every* row goes through
    the reference (one fp32 forward per row and step; selecting only the candidates would cost
    a host sync): success = candidate ∧ fp32, dtype_only = candidate ∧ ¬fp32, missed =
    fp32 ∧ ¬candidate. ``keep_missed``: a missed hit is a success too (success = fp32). At fp32
    the attack pass is the fp32 pass: success = candidate, nothing else, no second forward. The
    autocast family (``amp-*``) is confirmed like fp16/bf16, whatever dtype its logits have.
    """
    z = logits.detach()
    inside = ((x >= lo) & (x <= hi)).flatten(1).all(dim=1)
    candidate = torch.isfinite(z).all(dim=1) & (z.argmax(dim=1) != y) & inside
    if not confirms_with_reference(model, logits):
        none = torch.zeros_like(candidate)
        return candidate, none, none
    z32 = model.reference(x)
    fp32 = torch.isfinite(z32).all(dim=1) & (z32.argmax(dim=1) != y) & inside
    missed = fp32 & ~candidate
    success = fp32 if keep_missed else candidate & fp32
    return success, candidate & ~fp32, missed


def is_autocast(model: object) -> bool:
    """True for a :class:`PrecisionModel` of the autocast family (``amp-*``)."""
    return bool(getattr(getattr(model, "precision", None), "autocast", False))


def confirms_with_reference(model: object, logits: Tensor) -> bool:
    """Does an iterate need the fp32 reference's confirmation forward? Yes unless the attack
    pass is itself an fp32 pass: float32 logits of a pure-dtype model. An autocast model always
    does (its logits may come back float32 from an op autocast promotes)."""
    return logits.dtype != torch.float32 or is_autocast(model)


def loss_context(model: object, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the engines compute the loss in: :meth:`PrecisionModel.autocast` for the
    autocast family (the loss as autocast computes it), a no-op otherwise."""
    return model.autocast(device) if is_autocast(model) else contextlib.nullcontext()  # type: ignore[attr-defined]


def input_gradient(loss: Tensor, logits: Tensor, x: Tensor, keep: Tensor, *,
                   loss_scale: float = 1.0) -> Tensor:
    """∇_x Σ_{i: keep_i} loss_i, float32, with the network's backward run on the logit gradient
    of each row rescaled by a power of two so that its largest entry is at most 1.

    [derived here] The scaled losses multiply the logits by c = t/Δ (up to ~6.5e4 in fp16,
    :mod:`tmifpe.losses.scaling`), so their logit gradient c·(p − e_y) can make an fp16
    backward through the network overflow where CE's (entries ≤ 1) does not. The backward is
    linear in the logit gradient g, and multiplying g by 2^-e is exact in binary floating point,
    so each intermediate value, and ∇_x, is exactly 2^-e times the unscaled one (same sign)
    unless a value of the unscaled backward overflowed (the case this fixes) or a scaled one
    reaches the subnormal range. Rows with max |g| ≤ 1 (every CE and C&W row) are not touched;
    non-finite rows stay non-finite (the engine takes a random step for them). Rows outside
    ``keep`` get no gradient (``torch.where`` masks them, NaN included). No host sync.

    ``loss_scale`` S (default 1: off): the loss sum is multiplied by S before the backward
    into the logits, as AMP users do for weight gradients (``torch.amp.GradScaler``): under
    autocast the fp32 loss's logit gradient is cast to fp16 there, and S lifts entries that
    would underflow; S·max|g| > 65504 overflows instead (an fp16 row of Inf: a random step).
    Rows whose scaled gradient exceeds 1 are then scaled back down as above. See
    :data:`tmifpe.attacks.runs.LOSS_SCALE` for the engines' default and the measurement.
    """
    masked = torch.where(keep, loss, torch.zeros_like(loss))
    total = masked.sum() if loss_scale == 1.0 else masked.sum() * loss_scale
    (g,) = torch.autograd.grad(total, logits)
    amax = g.detach().abs().amax(dim=1).float()
    _, e = torch.frexp(amax)  # amax = m·2^e, m ∈ [0.5, 1)
    e = torch.where(torch.isfinite(amax) & (amax > 1.0), e, torch.zeros_like(e))
    scale = torch.ldexp(torch.ones_like(amax), -e).to(g.dtype)  # exact power of two
    (grad,) = torch.autograd.grad(logits, x, grad_outputs=g * scale[:, None])
    return grad.float()


class RunCounters:
    """Per-run counters on the attack device, indexed by the run's rows: updated each step
    without a host sync and added to the :class:`RunState` once per run (:meth:`flush`)."""

    def __init__(self, n: int, device: torch.device) -> None:
        def z() -> Tensor:
            return torch.zeros(n, dtype=torch.int64, device=device)

        self.fwd, self.bwd, self.zero, self.nonfinite = z(), z(), z(), z()
        self.dtype_only, self.missed = z(), z()
        self.first = torch.full((n,), NEVER, dtype=torch.int64, device=device)

    @staticmethod
    def add(counter: Tensor, live: Tensor, values: Tensor | int) -> None:
        """counter[live] += values (``live``: device row indices of the step)."""
        if isinstance(values, int):
            values = torch.full(live.shape, values, dtype=torch.int64, device=live.device)
        counter.index_add_(0, live, values.long())

    def mark_success(self, live: Tensor, hit: Tensor, k: int) -> None:
        """first[live[i]] = k where hit[i] (an example is hit once: it leaves ``live``)."""
        self.first.index_copy_(0, live, torch.where(hit, k, self.first[live]))

    def count_degenerate(self, live: Tensor, grad: Tensor, loss: Tensor) -> Tensor:
        """Count steps whose gradient is exactly zero, or whose loss/gradient is NaN/Inf;
        returns the (n,) bool mask of the finite ones (the others take a random step)."""
        flat = grad.flatten(1)
        finite = torch.isfinite(flat).all(dim=1) & torch.isfinite(loss)
        self.add(self.nonfinite, live, ~finite)
        self.add(self.zero, live, finite & (flat == 0).all(dim=1))
        return finite

    def flush(self, state: RunState, idx: Tensor, x_hit: Tensor, x_robust: Tensor,
              tgt: Tensor | None) -> None:
        """Add this run's counts to ``state`` rows ``idx`` (CPU); successful rows get
        ``x_hit`` and their first success iterate and target, the others ``x_robust``."""
        first = self.first.cpu()
        for name, c in (("fwd", self.fwd), ("bwd", self.bwd), ("zero", self.zero),
                        ("nonfinite", self.nonfinite), ("dtype_only", self.dtype_only),
                        ("missed", self.missed)):
            getattr(state, name)[idx] += c.cpu()
        hit = first != NEVER
        state.success[idx[hit]] = True
        state.first[idx[hit]] = first[hit]
        state.x_adv[idx] = torch.where(hit.view(-1, *[1] * (x_hit.dim() - 1)),
                                       x_hit.cpu(), x_robust.cpu())
        if tgt is not None:
            state.target[idx[hit]] = tgt.cpu()[hit]


def fallback_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """Generator of the random sign steps taken where a step's loss or gradient is NaN/Inf, on
    the attack device, seeded from ``gen``'s seed without drawing from ``gen`` (so the random
    starts, and every result without such a step, are those of a run that never needs one)."""
    return torch.Generator(device=device).manual_seed((gen.initial_seed() * 7919 + 17) % 2**63)


def step_direction(grad: Tensor, ok: Tensor, fallback: torch.Generator) -> Tensor:
    """sign(grad) where ``ok``, else a uniform random sign per pixel [derived here: a non-finite
    step must not leave the iterate where it is, or the deterministic recomputation repeats it
    for the rest of the run]. Drawn every step (no host sync to ask whether any row needs it)."""
    noise = torch.randint(0, 2, grad.shape, generator=fallback, device=grad.device,
                          dtype=torch.int8)
    view = ok.view(-1, *[1] * (grad.dim() - 1))
    return torch.where(view, grad.sign(), 2.0 * noise.to(grad.dtype) - 1.0)


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
