"""Python API: attack any model on any points, get verified per-example results.

Replaces, for an l∞ robustness check::

    from autoattack import AutoAttack                      # before
    x_adv = AutoAttack(model, norm="Linf", eps=8/255).run_standard_evaluation(x, y)

    import tmifpe                                          # after
    res = tmifpe.evaluate(model, x, y, loss="tmifpe", eps=8/255, budget=100, targets=3)
    print(res.clean_acc, res.robust_acc); res.frame()      # per-example Parquet-ready table

The attack is the suite's PGD engine (:func:`tmifpe.attacks.pgd.run_pgd`, cosine step schedule,
momentum, freeze-on-success) run in the chosen precision through
:class:`tmifpe.precision.PrecisionModel`; every returned point is re-verified by
:func:`tmifpe.verify.verify` (inside the eps-ball and [0,1], misclassified by a fresh fp32
forward pass; the fp64 verdict is recorded too). Batches are seeded exactly as in the DVC attack
cells, so the same model, points and settings give the cells' per-example results.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.fast import FastConfig
from tmifpe.attacks.schedule import Schedule
from tmifpe.evaluation.attack import (
    EXAMPLE_KEYS,
    AttackSettings,
    BatchProgress,
    robust_columns,
    run_attack,
    unit_frame,
)
from tmifpe.evaluation.fast import FastRun, run_fast_eval
from tmifpe.losses import parse_loss
from tmifpe.precision import check_deterministic, parse_precision
from tmifpe.runtime import numerics

__all__ = ["BatchProgress", "EvalResult", "FastRun", "evaluate", "evaluate_fast"]


@dataclass(frozen=True)
class EvalResult:
    """Per-example outcome of :func:`evaluate` ((N,) CPU tensors unless noted) and its settings.

    ``robust`` is the headline verdict: clean-correct (finite fp32 clean logits, argmax = label)
    and not broken (``valid``, finite fp32 logits of ``x_adv`` and argmax ≠ label, by a fresh
    fp32 forward pass). ``attack_success`` is the engine's confirmed success (attack dtype and
    fp32 agree); ``dtype_only_hits`` counts iterates only the attack dtype called misclassified
    (docs/results-schema.md). ``environment`` is :func:`tmifpe.runtime.environment`.
    """

    x_adv: Tensor  # (N, ...) float32
    label: Tensor  # int64
    clean_correct: Tensor  # bool, fp32 clean forward pass (finite logits, argmax = label)
    attack_success: Tensor  # bool
    valid: Tensor  # bool: inside the eps-ball (float64 check) and [0,1]
    robust: Tensor  # bool, fp32 verdict
    robust_fp64: Tensor  # bool, fp64 verdict
    pred_fp32: Tensor  # int64
    pred_fp64: Tensor  # int64
    margin_fp32: Tensor  # float64: z_y − max_{j≠y} z_j at fp32
    margin_fp64: Tensor  # float64
    nonfinite_fp32: Tensor  # bool: NaN/±Inf in the fp32 verdict logits of x_adv
    nonfinite_fp64: Tensor  # bool
    first_success_iter: Tensor  # int32-valued int64, -1 never
    success_target: Tensor  # int64, -1 none
    n_forward: Tensor  # int64
    n_backward: Tensor  # int64
    zero_grad_steps: Tensor  # int64
    nonfinite_steps: Tensor  # int64
    dtype_only_hits: Tensor  # int64: iterates misclassified in the attack dtype only
    missed_hits: Tensor  # int64: iterates misclassified by fp32 only (attack dtype did not)
    loss: str
    eps: float
    budget: int
    precision: str
    n_targets: int  # 0: untargeted
    restarts: int
    seed: int
    wall_time_s: float
    environment: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    @property
    def clean_acc(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_acc(self) -> float:
        return float(self.robust.float().mean())

    @property
    def passes_per_point(self) -> float:
        """Mean forward + backward passes per point (the aggregate tables' cost measure)."""
        return float((self.n_forward + self.n_backward).double().mean())

    def frame(self, *, dataset: str = "", model: str = "") -> pl.DataFrame:
        """The rows of an attack cell's Parquet (docs/results-schema.md), one per example."""
        columns = {k: getattr(self, k) for k in EXAMPLE_KEYS}
        return unit_frame(columns, dataset=dataset, model=model, loss=self.loss,
                          precision=self.precision, budget=self.budget, restarts=self.restarts,
                          n_targets=self.n_targets, eps=self.eps, seed=self.seed)


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: str = "tmifpe",
    eps: float,
    budget: int = 100,
    precision: str = "fp32",
    targets: int = 0,
    schedule: str = "cosine",
    momentum: float = 0.75,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 500,
    tstar_rule: str = "coef",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    progress: BatchProgress | None = None,
) -> EvalResult:
    """PGD with ``loss`` at ``precision`` for ``budget`` iterations on float32 ``x`` in [0,1]
    (N, C, H, W) with int64 labels ``y`` (N,); every point re-verified at fp32 and fp64.

    ``targets`` = 0: untargeted; T > 0: targeted, one run per target class (clean ranks
    2…T+1) on the points still robust. Normalisation belongs inside ``model`` (as in
    AutoAttack and RobustBench). Runs under :func:`tmifpe.runtime.numerics` ``(threads)`` (IEEE
    fp32, deterministic kernels; the caller's torch settings are restored afterwards) on copies
    of ``model`` (left in its mode and on its device). Raises ValueError naming a bad argument.
    """
    loss_name = parse_loss(loss)
    prec = parse_precision(precision)
    sched = _parse_schedule(schedule)
    _check_points(x, y)
    if isinstance(targets, bool) or not isinstance(targets, int) or targets < 0:
        raise ValueError(f"targets must be an int >= 0 (0 = untargeted), got {targets!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    settings = AttackSettings(loss=loss_name, eps=float(eps), budget=budget, schedule=sched,
                              momentum=momentum, restarts=restarts, seed=seed,
                              batch_size=batch_size, tstar_rule=tstar_rule)
    run = run_attack(model, x, y, settings, prec, n_targets=targets, device=device,
                     threads=threads, progress=progress)
    robust32, robust64 = robust_columns(run.columns)
    return EvalResult(**run.columns, robust=robust32, robust_fp64=robust64,
                      loss=loss_name.value, eps=float(eps), budget=budget, precision=prec.value,
                      n_targets=run.n_targets, restarts=restarts, seed=seed,
                      wall_time_s=run.wall_time_s, environment=run.environment)


def evaluate_fast(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    seed: int = 0,
    batch_size: int = 500,
    config: FastConfig | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    dataset: str = "",
    model_name: str = "",
) -> FastRun:
    """The fast preset (docs/fast.md, :mod:`tmifpe.attacks.fast`) on float32 ``x`` in [0,1]
    with int64 labels ``y``; ``config`` gives other phases/guard than the preset's (its eps,
    seed and batch size are replaced by the arguments).
    Returns the per-example frame (``FAST_SCHEMA``, every point labelled held-out), wall time
    and environment; same runtime contract and model handling as :func:`evaluate`."""
    _check_points(x, y)
    with numerics(threads):  # the check's forward passes run under the contract too
        check_deterministic(model, x)
    cfg = replace(config or FastConfig(eps=float(eps)), eps=float(eps), seed=seed,
                  batch_size=batch_size)
    return run_fast_eval(model, x, y, cfg, dataset=dataset, model_name=model_name,
                         device=device, threads=threads)


def _parse_schedule(name: str) -> Schedule:
    try:
        return Schedule(name)
    except ValueError:
        allowed = ", ".join(s.value for s in Schedule)
        raise ValueError(f"unknown schedule {name!r}; expected one of: {allowed}") from None


def _check_points(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError("x and y must be torch tensors")
    if x.dtype != torch.float32 or y.dtype != torch.int64:
        raise ValueError(f"need float32 x and int64 y, got {x.dtype} and {y.dtype}")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need x (N, ...) and y (N,) with N >= 1, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("x must be finite pixels in [0,1] (normalisation belongs in the model)")
    if int(y.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(y.min())}")
