"""The AutoAttack runner below every door: standard AA, verified, as an ``AA_SCHEMA`` frame.

:func:`run_autoattack_eval` runs (or resumes from a state path) the stage-wise cascade of
:func:`tmifpe.attacks.autoattack.run_autoattack` under the runtime contract
(:func:`tmifpe.runtime.numerics`), re-verifies every returned point with
:func:`tmifpe.verify.verify` at fp32 and fp64 (broken = valid ∧ finite logits ∧ argmax ≠ y) and
records the environment (:func:`tmifpe.runtime.environment`). :func:`evaluate_autoattack` is the
Python API (``tmifpe.evaluate_autoattack``); the DVC cell
(:mod:`tmifpe.pipeline.autoattack_cell`) and ``tmifpe evaluate --vs-autoattack`` call the same
runner. The caller's model is never modified: a model on another device is copied there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.autoattack import ATTACKS, AAConfig, AAResult, Progress, run_autoattack
from tmifpe.evaluation.cost import autoattack_passes
from tmifpe.evaluation.schema import AA_SCHEMA, build_frame
from tmifpe.precision import Precision, PrecisionModel, check_deterministic
from tmifpe.runtime import environment, numerics, resolve_device
from tmifpe.verify import Verdict, verify
from tmifpe.verify import clean_correct as finite_and_correct


@dataclass(frozen=True)
class AutoAttackEval:
    """Verified outcome of standard AutoAttack: the per-example rows and how they were made."""

    examples: pl.DataFrame  # AA_SCHEMA rows, one per example (docs/results-schema.md)
    x_adv: Tensor  # (N, ...) float32 CPU: breaking point, else non-finite one, else clean
    stage_wall_time_s: dict[str, float]  # attack -> seconds (summed over resumed runs)
    environment: dict[str, Any]  # tmifpe.runtime.environment() of the run
    n_target_classes: int  # targets of APGD-T and FAB-T: min(9, K − 1)

    def frame(self) -> pl.DataFrame:
        return self.examples

    @property
    def n(self) -> int:
        return self.examples.height

    @property
    def clean_acc(self) -> float:
        return float(self.examples["clean_correct"].mean())  # type: ignore[arg-type]

    @property
    def robust_acc(self) -> float:
        """Fraction clean-correct and not broken at fp32 (the headline verdict)."""
        return float(self.examples["robust_fp32"].mean())  # type: ignore[arg-type]

    @property
    def robust_acc_fp64(self) -> float:
        return float(self.examples["robust_fp64"].mean())  # type: ignore[arg-type]

    @property
    def n_nonfinite(self) -> int:
        """Examples whose returned point has NaN/±Inf fp32 logits (never counted broken)."""
        return int(self.examples["nonfinite_fp32"].sum())

    @property
    def passes_per_point(self) -> float:
        return float(self.examples.select(autoattack_passes().mean()).item())

    @property
    def wall_time_s(self) -> float:
        return float(sum(self.stage_wall_time_s.values()))


def autoattack_frame(result: AAResult, verdict: Verdict, y: Tensor, clean_correct: Tensor, *,
                     dataset: str, model: str) -> pl.DataFrame:
    """``AA_SCHEMA`` rows from the cascade's ``result`` and the :func:`verify` ``verdict`` of
    its ``x_adv`` (CPU tensors of one length N)."""
    n = y.shape[0]
    if not verdict.valid.shape[0] == result.n_grad.shape[0] == clean_correct.shape[0] == n:
        raise ValueError(f"y ({n}), verdict ({verdict.valid.shape[0]}), result "
                         f"({result.n_grad.shape[0]}) must describe the same points")
    cc, y = clean_correct.bool().cpu(), y.cpu()
    cfg = result.config
    return build_frame(AA_SCHEMA, {
        "dataset": dataset, "model": model, "eps": float(cfg.eps), "seed": cfg.seed,
        "batch_size": cfg.batch_size, "example": torch.arange(n), "label": y,
        "clean_correct": cc, "broken_by": result.broken_by,
        **{f"robust_after_{a.replace('-', '_')}": result.robust_after[a] for a in ATTACKS},
        "valid": verdict.valid, "robust_fp32": cc & ~verdict.broken(y),
        "robust_fp64": cc & ~verdict.broken(y, fp64=True), "margin_fp32": verdict.margin_fp32,
        "n_grad": result.n_grad, "n_queries": result.n_queries,
        "nonfinite_fp32": verdict.nonfinite_fp32, "nonfinite_fp64": verdict.nonfinite_fp64,
    })


def run_autoattack_eval(
    model: nn.Module, x: Tensor, y: Tensor, config: AAConfig, *, dataset: str = "",
    model_name: str = "", state_path: Path | None = None, progress: Progress | None = None,
    threads: int | None = None,
) -> AutoAttackEval:
    """Standard AutoAttack on float32 ``x`` (N, ...) in [0,1], int64 ``y``, verified.

    ``model``: eval mode, float32 (ValueError otherwise; train-mode layers would randomise the
    verdict). ``state_path``: resumable progress (see :func:`run_autoattack`). ``threads``: CPU
    threads for the call (default: unchanged). ``dataset``/``model_name`` fill the frame's
    name columns.
    """
    dev = resolve_device(config.device)
    config = AAConfig(eps=config.eps, seed=config.seed, batch_size=config.batch_size,
                      version=config.version, device=str(dev))
    check_deterministic(model, x, name=model_name)
    if any(m.training for m in model.modules()):
        raise ValueError("model must be in eval mode (train-mode layers randomise AutoAttack)")
    with numerics(threads):
        env = environment(dev)
        net = _on_device(model, dev)
        x, y = x.detach().cpu(), y.detach().cpu()
        result = run_autoattack(net, x.to(dev), y.to(dev), config, state_path=state_path,
                                progress=progress)
        verdict, clean_correct = _verify(net, x, result.x_adv, y, config, dev)
    frame = autoattack_frame(result, verdict, y, clean_correct, dataset=dataset,
                             model=model_name)
    return AutoAttackEval(examples=frame, x_adv=result.x_adv,
                          stage_wall_time_s=dict(result.wall_time_s), environment=env,
                          n_target_classes=result.n_target_classes)


def evaluate_autoattack(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, seed: int = 0, batch_size: int = 500,
    device: str | torch.device = "auto", threads: int | None = None,
    progress: Progress | None = None, dataset: str = "", model_name: str = "",
) -> AutoAttackEval:
    """Standard AutoAttack (l∞ ``eps``, fixed ``seed`` and ``batch_size``) on any eval-mode
    float32 model, every point re-verified at fp32 and fp64; see :func:`run_autoattack_eval`.
    ``device``: ``auto`` (CUDA if present), ``cpu``, ``cuda[:N]``."""
    cfg = AAConfig(eps=eps, seed=seed, batch_size=batch_size, device=str(resolve_device(device)))
    return run_autoattack_eval(model, x, y, cfg, dataset=dataset, model_name=model_name,
                               threads=threads, progress=progress)


def _on_device(model: nn.Module, dev: torch.device) -> nn.Module:
    """``model`` itself when all its tensors are on ``dev``, else a copy moved there."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device == dev for t in tensors):
        return model
    return copy.deepcopy(model).to(dev)


@torch.no_grad()
def _verify(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, config: AAConfig,
            dev: torch.device) -> tuple[Verdict, Tensor]:
    """Verdict of ``x_adv`` and clean-correct (finite fp32 logits, argmax = y), in batches."""
    ref32 = PrecisionModel(model, Precision.FP32)
    ref64 = PrecisionModel(model, Precision.FP64)
    parts, correct = [], []
    for i in range(0, x.shape[0], config.batch_size):
        xb, ab = x[i : i + config.batch_size].to(dev), x_adv[i : i + config.batch_size].to(dev)
        yb = y[i : i + config.batch_size].to(dev)
        parts.append(verify(ref32, ref64, xb, ab, yb, config.eps).cpu())
        clean = ref32(xb)
        correct.append(finite_and_correct(clean, yb).cpu())
    return Verdict.cat(parts), torch.cat(correct)
