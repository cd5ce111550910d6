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

import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.attacks.runs import batch_seed
from tmifpe.attacks.schedule import Schedule
from tmifpe.losses import get_loss, parse_loss
from tmifpe.precision import Precision, PrecisionModel, parse_precision
from tmifpe.verify import verify

BatchProgress = Callable[[int, int], None]  # (points done, points total), after each batch


@dataclass(frozen=True)
class EvalResult:
    """Per-example outcome of :func:`evaluate` ((N,) CPU tensors unless noted) and its settings.

    ``robust`` is the headline verdict: clean-correct and not (``valid`` and misclassified by a
    fresh fp32 forward pass of ``x_adv``). ``attack_success`` is the engine's confirmed success
    (attack dtype and fp32 agree); ``dtype_only_hits`` counts iterates only the attack dtype
    called misclassified (docs/results-schema.md).
    """

    x_adv: Tensor  # (N, ...) float32
    label: Tensor  # int64
    clean_correct: Tensor  # bool, fp32 clean forward pass
    attack_success: Tensor  # bool
    valid: Tensor  # bool: inside the eps-ball (float64 check) and [0,1]
    robust: Tensor  # bool, fp32 verdict
    robust_fp64: Tensor  # bool, fp64 verdict
    pred_fp32: Tensor  # int64
    margin_fp32: Tensor  # float64: z_y − max_{j≠y} z_j at fp32
    margin_fp64: Tensor  # float64
    first_success_iter: Tensor  # int32-valued int64, -1 never
    success_target: Tensor  # int64, -1 none
    n_forward: Tensor  # int64
    n_backward: Tensor  # int64
    zero_grad_steps: Tensor  # int64
    nonfinite_steps: Tensor  # int64
    dtype_only_hits: Tensor  # int64: iterates misclassified in the attack dtype only
    loss: str
    eps: float
    budget: int
    precision: str
    n_targets: int  # 0: untargeted
    restarts: int
    seed: int
    wall_time_s: float

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

    def frame(self, *, suite: str = "evaluate", dataset: str = "", model: str = "") -> pl.DataFrame:
        """The rows of an attack cell's Parquet (docs/results-schema.md), one per example."""
        n, y = self.n, self.label
        broken32 = self.valid & (self.pred_fp32 != y)
        return pl.DataFrame({
            "suite": [suite] * n, "dataset": [dataset] * n, "model": [model] * n,
            "loss": [self.loss] * n, "targeted": [self.n_targets > 0] * n,
            "precision": [self.precision] * n,
            "budget": pl.Series([self.budget] * n, dtype=pl.Int32),
            "restarts": pl.Series([self.restarts] * n, dtype=pl.Int32),
            "n_targets": pl.Series([self.n_targets] * n, dtype=pl.Int32),
            "eps": [float(self.eps)] * n, "seed": [self.seed] * n,
            "example": torch.arange(n).numpy(), "label": y.numpy(),
            "clean_correct": self.clean_correct.numpy(),
            "attack_success": self.attack_success.numpy(), "valid": self.valid.numpy(),
            "robust_fp32": self.robust.numpy(), "robust_fp64": self.robust_fp64.numpy(),
            "false_success": (self.attack_success & ~broken32).numpy(),
            "fp32_fp64_disagree": (self.robust != self.robust_fp64).numpy(),
            "first_success_iter": pl.Series(self.first_success_iter.numpy(), dtype=pl.Int32),
            "success_target": self.success_target.numpy(),
            "margin_fp32": self.margin_fp32.numpy(), "margin_fp64": self.margin_fp64.numpy(),
            "n_forward": self.n_forward.numpy(), "n_backward": self.n_backward.numpy(),
            "zero_grad_steps": self.zero_grad_steps.numpy(),
            "nonfinite_steps": self.nonfinite_steps.numpy(),
            "dtype_only_hits": self.dtype_only_hits.numpy(),
        })


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
    progress: BatchProgress | None = None,
) -> EvalResult:
    """PGD with ``loss`` at ``precision`` for ``budget`` iterations on float32 ``x`` in [0,1]
    (N, C, H, W) with int64 labels ``y`` (N,); every point re-verified at fp32 and fp64.

    ``targets`` = 0: untargeted; T > 0: targeted, one run per target class (clean ranks
    2…T+1) on the points still robust. Normalisation belongs inside ``model`` (as in
    AutoAttack and RobustBench). Raises ValueError naming a bad argument.
    """
    loss_name = parse_loss(loss)
    prec = parse_precision(precision)
    sched = _parse_schedule(schedule)
    _check_points(x, y)
    if isinstance(targets, bool) or not isinstance(targets, int) or targets < 0:
        raise ValueError(f"targets must be an int >= 0 (0 = untargeted), got {targets!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device)
    model = model.to(dev).eval()
    ref32 = PrecisionModel(model, Precision.FP32)
    ref64 = PrecisionModel(model, Precision.FP64)
    # the attacked copy; its successes are confirmed by the shared fp32 reference
    attacked = ref32 if prec is Precision.FP32 else PrecisionModel(model, prec, reference=ref32)
    loss_fn = get_loss(loss_name, tstar_rule=tstar_rule)
    targeted = targets > 0
    parts: list[dict[str, Tensor]] = []
    t0 = time.perf_counter()
    n_used = 0
    for b, start in enumerate(range(0, x.shape[0], batch_size)):
        xb = x[start : start + batch_size].to(dev)
        yb = y[start : start + batch_size].to(dev)
        with torch.no_grad():
            clean_logits = ref32(xb)
        if clean_logits.ndim != 2 or int(yb.max()) >= clean_logits.shape[1]:
            raise ValueError(f"model returns logits of shape {tuple(clean_logits.shape)}; labels "
                             f"go up to {int(yb.max())}: need (N, K) logits with K > max label")
        clean_correct = (clean_logits.argmax(dim=1) == yb).cpu()
        tgt = attack_targets(clean_logits, targets) if targeted else None
        n_used = 0 if tgt is None else int(tgt.shape[1])
        cfg = PGDConfig(eps=eps, steps=budget, schedule=sched, momentum=momentum,
                        restarts=restarts, targeted=targeted, n_targets=n_used, seed=seed)
        gen = torch.Generator().manual_seed(batch_seed(seed, targeted, b))
        res = run_pgd(attacked, xb, yb, loss_fn, cfg, attack_mask=clean_correct, targets=tgt,
                      generator=gen)
        v = verify(ref32, ref64, xb, res.x_adv.to(dev), yb, eps)
        y_cpu = yb.cpu()
        parts.append({
            "x_adv": res.x_adv.cpu(), "label": y_cpu, "clean_correct": clean_correct,
            "attack_success": res.success.cpu(), "valid": v.valid.cpu(),
            "robust": clean_correct & ~v.broken(yb).cpu(),
            "robust_fp64": clean_correct & ~v.broken(yb, fp64=True).cpu(),
            "pred_fp32": v.pred_fp32.cpu(), "margin_fp32": v.margin_fp32.cpu(),
            "margin_fp64": v.margin_fp64.cpu(),
            "first_success_iter": res.first_success_iter.cpu(),
            "success_target": res.success_target.cpu(), "n_forward": res.n_forward.cpu(),
            "n_backward": res.n_backward.cpu(), "zero_grad_steps": res.zero_grad_steps.cpu(),
            "nonfinite_steps": res.nonfinite_steps.cpu(),
            "dtype_only_hits": res.dtype_only_hits.cpu(),
        })
        if progress is not None:
            progress(min(start + batch_size, x.shape[0]), x.shape[0])
    wall = time.perf_counter() - t0
    tensors = {f.name: torch.cat([p[f.name] for p in parts]) for f in fields(EvalResult)
               if f.name in parts[0]}
    return EvalResult(**tensors, loss=loss_name.value, eps=float(eps), budget=budget,
                      precision=prec.value, n_targets=n_used, restarts=restarts, seed=seed,
                      wall_time_s=wall)


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
