"""The runner of the fast preset (:mod:`tmifpe.attacks.fast`, docs/fast.md): the preset on a
model's points under the runtime contract, returned as :data:`FAST_SCHEMA` rows.

``tmifpe.evaluate_fast``, ``tmifpe evaluate --attack fast`` and the pipeline's fast cell call
:func:`run_fast_eval`; the cell adds only the tuning/held-out split and file output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from torch import Tensor, nn

from tmifpe.attacks.fast import FastConfig, FastResult, run_fast
from tmifpe.evaluation.schema import FAST_SCHEMA, build_frame
from tmifpe.runtime import environment, numerics, resolve_device

TUNING, HELD_OUT = "tuning", "held_out"


@dataclass(frozen=True)
class FastRun:
    """:func:`run_fast_eval`'s outcome: the per-example frame, the preset's tensors (``x_adv``
    …), the wall time of the preset and the environment (:func:`tmifpe.runtime.environment`)."""

    frame: pl.DataFrame
    result: FastResult
    wall_time_s: float
    environment: dict[str, Any]

    @property
    def clean_acc(self) -> float:
        return float(self.frame["clean_correct"].mean())  # type: ignore[arg-type]

    @property
    def robust_acc(self) -> float:
        return float(self.frame["robust_fp32"].mean())  # type: ignore[arg-type]

    @property
    def passes_per_point(self) -> float:
        return float(self.frame["passes"].mean())  # type: ignore[arg-type]


def fast_frame(result: FastResult, y: Tensor, split: list[str], config: FastConfig, *,
               dataset: str, model: str) -> pl.DataFrame:
    """Rows of ``results/fast/<model>.parquet`` (docs/fast.md), one per example."""
    n = y.shape[0]
    if not len(split) == result.success.shape[0] == n:
        raise ValueError("result, labels and split must describe the same points")
    cc, y, v = result.clean_correct.cpu(), y.cpu(), result.verdict
    return build_frame(FAST_SCHEMA, {
        "dataset": dataset, "model": model, "preset": config.name, "eps": float(config.eps),
        "seed": config.seed, "example": torch.arange(n), "split": split, "label": y,
        "clean_correct": cc, "success": result.success, "broken_by": result.broken_by,
        "valid": v.valid, "robust_fp32": cc & ~v.broken(y),
        "robust_fp64": cc & ~v.broken(y, fp64=True), "margin_fp32": v.margin_fp32,
        "n_forward": result.n_forward, "n_backward": result.n_backward,
        "n_queries": result.n_queries, "n_verify": result.n_verify, "passes": result.passes,
        "forward_equivalents": result.forward_equivalents,
        "zero_grad_steps": result.zero_grad_steps, "nonfinite_steps": result.nonfinite_steps,
        "flag_zero_grad": result.flag_zero_grad, "flag_nonfinite": result.flag_nonfinite,
        "guard_broken": result.guard_broken, "escalated": result.escalated,
        "randomized": result.randomized,
        "nonfinite_fp32": v.nonfinite_fp32, "nonfinite_fp64": v.nonfinite_fp64,
    })


def run_fast_eval(model: nn.Module, x: Tensor, y: Tensor, config: FastConfig, *,
                  dataset: str = "", model_name: str = "", split: list[str] | None = None,
                  device: str | torch.device = "cpu", threads: int | None = None) -> FastRun:
    """The preset on ``x``/``y`` (float32 in [0,1], int64) on ``device`` under
    :func:`tmifpe.runtime.numerics` ``(threads)``; ``model`` is only deep-copied. ``split``:
    each point's split label (default: every point held-out)."""
    dev = resolve_device(device)
    split = [HELD_OUT] * int(y.shape[0]) if split is None else split
    with numerics(threads):
        env = environment(dev)
        t0 = time.perf_counter()
        result = run_fast(model, x, y, config, device=dev)
        wall = time.perf_counter() - t0
    frame = fast_frame(result, y, split, config, dataset=dataset, model=model_name)
    return FastRun(frame, result, wall, env)
