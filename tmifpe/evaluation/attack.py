"""The one runner of a PGD attack unit: one precision, untargeted or targeted, one batch of
points -> verified per-example columns (the rows of an attack cell, :data:`CELL_SCHEMA`).

``tmifpe.evaluate`` (:func:`run_attack` over every batch) and the pipeline's attack cell (one
:func:`run_unit` per checkpointed unit) both run it, so the same model, points and settings give
the same rows through either door. Batch ``b`` draws its random starts from
:func:`tmifpe.attacks.runs.batch_seed` ``(seed, targeted, b)``.

Verdicts (:mod:`tmifpe.verify`): clean-correct = finite fp32 clean logits whose argmax is the
label; broken = inside the eps-ball and [0,1], finite fp32 logits, argmax ≠ label;
robust = clean-correct ∧ ¬broken (fp64 likewise).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.pgd import PGDConfig, attack_targets, run_pgd
from tmifpe.attacks.runs import batch_seed
from tmifpe.attacks.schedule import Schedule
from tmifpe.evaluation.schema import CELL_SCHEMA, build_frame
from tmifpe.losses import LossName, get_loss
from tmifpe.precision import Precision, PrecisionModel, check_deterministic
from tmifpe.runtime import environment, numerics, resolve_device
from tmifpe.verify import Verdict, clean_correct, verify

BatchProgress = Callable[[int, int], None]  # (points done, points total), after each batch

# Per-example tensors of a unit (CPU, leading dim N), then its scalars.
VERDICT_KEYS = ("valid", "pred_fp32", "pred_fp64", "margin_fp32", "margin_fp64",
                "nonfinite_fp32", "nonfinite_fp64")
ENGINE_KEYS = ("attack_success", "first_success_iter", "success_target", "n_forward",
               "n_backward", "zero_grad_steps", "nonfinite_steps", "dtype_only_hits", "missed_hits")
EXAMPLE_KEYS = ("label", "clean_correct", *VERDICT_KEYS, *ENGINE_KEYS)


@dataclass(frozen=True)
class AttackSettings:
    """What determines a unit's result besides model, points, precision and targeting."""

    loss: LossName
    eps: float
    budget: int
    schedule: Schedule = Schedule.COSINE
    momentum: float = 0.75
    restarts: int = 1
    seed: int = 0
    batch_size: int = 500
    tstar_rule: str = "coef"


class VerdictModels:
    """The fp32/fp64 verdict copies of a model on ``device`` and its attacked copies (the
    caller's model is deep-copied by :class:`PrecisionModel`, never moved or switched to eval
    mode)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.ref32 = PrecisionModel(model, Precision.FP32).to(device)
        self.ref64 = PrecisionModel(model, Precision.FP64).to(device)
        self._model = model
        self._attacked: dict[Precision, PrecisionModel] = {Precision.FP32: self.ref32}

    def attacked(self, precision: Precision) -> PrecisionModel:
        """The copy at ``precision`` (fp32: the verdict copy); its successes are confirmed by
        the shared fp32 verdict copy."""
        if precision not in self._attacked:
            self._attacked[precision] = PrecisionModel(
                self._model, precision, reference=self.ref32).to(self.device)
        return self._attacked[precision]


@torch.no_grad()
def _clean(models: VerdictModels, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    logits = models.ref32(x)
    if logits.ndim != 2 or int(y.max()) >= logits.shape[1]:
        raise ValueError(f"model returns logits of shape {tuple(logits.shape)}; labels go up to "
                         f"{int(y.max())}: need (N, K) logits with K > max label")
    return logits, clean_correct(logits, y)


def run_unit(models: VerdictModels, settings: AttackSettings, precision: Precision, x: Tensor,
             y: Tensor, *, n_targets: int, batch: int) -> dict[str, Tensor]:
    """PGD on one batch (``n_targets`` = 0: untargeted; T: one run per clean rank 2…T+1), every
    point re-verified. Returns CPU tensors: ``x_adv``, :data:`EXAMPLE_KEYS`, and the scalars
    ``n_targets`` (targets used: min(T, K−1)), ``n_attacked``, ``wall_time_s`` (the attack
    alone). Call under :func:`tmifpe.runtime.numerics` (the public runners do)."""
    dev = models.device
    x, y = x.to(dev), y.to(dev)
    targeted = n_targets > 0
    clean_logits, correct = _clean(models, x, y)
    targets = attack_targets(clean_logits, n_targets) if targeted else None
    cfg = PGDConfig(eps=settings.eps, steps=settings.budget, schedule=settings.schedule,
                    momentum=settings.momentum, restarts=settings.restarts, targeted=targeted,
                    n_targets=0 if targets is None else int(targets.shape[1]), seed=settings.seed)
    gen = torch.Generator().manual_seed(batch_seed(settings.seed, targeted, batch))
    loss_fn = get_loss(settings.loss, tstar_rule=settings.tstar_rule)
    correct = correct.cpu()
    t0 = time.perf_counter()
    res = run_pgd(models.attacked(precision), x, y, loss_fn, cfg, attack_mask=correct,
                  targets=targets, generator=gen)
    wall = time.perf_counter() - t0
    v = verify(models.ref32, models.ref64, x, res.x_adv.to(dev), y, settings.eps).cpu()
    return {
        "x_adv": res.x_adv.cpu(), "label": y.cpu(), "clean_correct": correct,
        **{k: getattr(v, k) for k in VERDICT_KEYS},
        "attack_success": res.success.cpu(), "first_success_iter": res.first_success_iter.cpu(),
        "success_target": res.success_target.cpu(), "n_forward": res.n_forward.cpu(),
        "n_backward": res.n_backward.cpu(), "zero_grad_steps": res.zero_grad_steps.cpu(),
        "nonfinite_steps": res.nonfinite_steps.cpu(), "dtype_only_hits": res.dtype_only_hits.cpu(),
        "missed_hits": res.missed_hits.cpu(),
        "n_targets": torch.tensor(cfg.n_targets), "n_attacked": correct.sum(),
        "wall_time_s": torch.tensor(wall, dtype=torch.float64),
    }


def verdict_of(columns: Mapping[str, Tensor]) -> Verdict:
    """The :class:`Verdict` stored in a unit's columns."""
    return Verdict(*(columns[k] for k in VERDICT_KEYS))


def robust_columns(columns: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(robust_fp32, robust_fp64) = clean-correct ∧ ¬broken (:meth:`Verdict.broken`)."""
    v, y, cc = verdict_of(columns), columns["label"], columns["clean_correct"]
    return cc & ~v.broken(y), cc & ~v.broken(y, fp64=True)


def unit_frame(columns: Mapping[str, Tensor], *, dataset: str, model: str, loss: str,
               precision: str, budget: int, restarts: int, n_targets: int, eps: float,
               seed: int, start: int = 0) -> pl.DataFrame:
    """The :data:`CELL_SCHEMA` rows of per-example ``columns`` (examples ``start``…)."""
    y = columns["label"]
    n = int(y.shape[0])
    robust32, robust64 = robust_columns(columns)
    broken32 = verdict_of(columns).broken(y)
    return build_frame(CELL_SCHEMA, {
        "dataset": dataset, "model": model, "loss": loss, "targeted": n_targets > 0,
        "precision": precision, "budget": budget, "restarts": restarts, "n_targets": n_targets,
        "eps": float(eps), "seed": seed, "example": torch.arange(start, start + n),
        "label": y, "clean_correct": columns["clean_correct"],
        "attack_success": columns["attack_success"], "valid": columns["valid"],
        "robust_fp32": robust32, "robust_fp64": robust64,
        "false_success": columns["attack_success"] & ~broken32,
        "fp32_fp64_disagree": robust32 != robust64,
        **{k: columns[k] for k in ("first_success_iter", "success_target", "margin_fp32",
                                   "margin_fp64", "n_forward", "n_backward", "zero_grad_steps",
                                   "nonfinite_steps", "dtype_only_hits", "missed_hits",
                                   "nonfinite_fp32", "nonfinite_fp64")},
    })


@dataclass(frozen=True)
class AttackRun:
    """:func:`run_attack`'s outcome: per-example CPU tensors (``x_adv`` and
    :data:`EXAMPLE_KEYS`), the targets used, wall time and the environment."""

    columns: dict[str, Tensor]
    n_targets: int
    wall_time_s: float
    environment: dict[str, Any]


def run_attack(model: nn.Module, x: Tensor, y: Tensor, settings: AttackSettings,
               precision: Precision, *, n_targets: int = 0, device: str | torch.device = "cpu",
               threads: int | None = None, progress: BatchProgress | None = None) -> AttackRun:
    """:func:`run_unit` on every batch of ``settings.batch_size`` points (batch b seeded by
    ``batch_seed(seed, targeted, b)``), under :func:`tmifpe.runtime.numerics` ``(threads)``;
    ``model`` is left as it was (mode, device, parameters); a randomized model is refused
    (:func:`tmifpe.precision.check_deterministic`)."""
    dev = resolve_device(device)
    with numerics(threads):
        check_deterministic(model, x)
        env = environment(dev)
        models = VerdictModels(model, dev)
        parts: list[dict[str, Tensor]] = []
        t0 = time.perf_counter()
        bs = settings.batch_size
        for b, start in enumerate(range(0, x.shape[0], bs)):
            parts.append(run_unit(models, settings, precision, x[start : start + bs],
                                  y[start : start + bs], n_targets=n_targets, batch=b))
            if progress is not None:
                progress(min(start + bs, x.shape[0]), x.shape[0])
        wall = time.perf_counter() - t0
    columns = {k: torch.cat([p[k] for p in parts]) for k in ("x_adv", *EXAMPLE_KEYS)}
    return AttackRun(columns, int(parts[-1]["n_targets"]), wall, env)
