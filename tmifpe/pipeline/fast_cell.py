"""The fast-preset cell of one model: the preset on exactly the attack cells' points, every
verdict re-verified, written per example with its tuning/held-out split."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from tmifpe.attacks.fast import FastConfig, FastResult, Kind, Phase, run_fast
from tmifpe.data.sources import load_eval_points
from tmifpe.models.zoo import load_model
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.fast_config import FastParams
from tmifpe.runtime import resolve_device
from tmifpe.storage import write_json, write_parquet

TUNING, HELD_OUT = "tuning", "held_out"


def preset_config(params: FastParams, eps: float) -> FastConfig:
    """The preset the suite's ``fast:`` section describes, at ``eps``."""
    phases = tuple(Phase(Kind(p.kind), p.steps, p.loss.value, p.n_targets, p.restarts)
                   for p in params.phases)
    return FastConfig(eps=eps, phases=phases, guard_queries=params.guard_queries,
                      guard_p_init=params.guard_p_init, tstar_rule=params.tstar_rule,
                      batch_size=params.batch_size, seed=params.seed)


def tuning_mask(n: int, seed: int, fraction: float) -> Tensor:
    """(n,) bool: example i is in the tuning split iff its position in
    ``torch.randperm(n, generator=seed)`` is < round(fraction·n); the rest is held out."""
    if n < 1 or not 0.0 < fraction < 1.0:
        raise ValueError(f"need n >= 1 and 0 < fraction < 1, got n={n}, fraction={fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[: round(fraction * n)]] = True
    return mask


def split_labels(n: int, seed: int, fraction: float) -> list[str]:
    return [TUNING if t else HELD_OUT for t in tuning_mask(n, seed, fraction).tolist()]


def fast_frame(result: FastResult, y: Tensor, split: list[str], config: FastConfig,
               meta: dict) -> pl.DataFrame:
    """Rows of ``results/fast/<model>.parquet`` (docs/fast.md), one per example."""
    n = y.shape[0]
    missing = {"suite", "dataset", "model"} - meta.keys()
    if missing:
        raise ValueError(f"meta lacks {sorted(missing)}")
    if not len(split) == result.success.shape[0] == n:
        raise ValueError("result, labels and split must describe the same points")
    cc, y = result.clean_correct.cpu(), y.cpu()
    v = result.verdict

    def col(name: str, values: object, dtype: pl.DataType) -> pl.Series:
        return pl.Series(name, values, dtype=dtype)

    def np(t: Tensor) -> object:
        return t.cpu().numpy()

    return pl.DataFrame([
        col("suite", [meta["suite"]] * n, pl.String),
        col("dataset", [meta["dataset"]] * n, pl.String),
        col("model", [meta["model"]] * n, pl.String),
        col("preset", [config.name] * n, pl.String),
        col("eps", [float(config.eps)] * n, pl.Float64),
        col("seed", [config.seed] * n, pl.Int64),
        col("example", range(n), pl.Int64),
        col("split", split, pl.String),
        col("label", np(y), pl.Int64),
        col("clean_correct", np(cc), pl.Boolean),
        col("success", np(result.success), pl.Boolean),
        col("broken_by", result.broken_by, pl.String),
        col("valid", np(v.valid), pl.Boolean),
        col("robust_fp32", np(cc & ~v.broken(y)), pl.Boolean),
        col("robust_fp64", np(cc & ~v.broken(y, fp64=True)), pl.Boolean),
        col("margin_fp32", np(v.margin_fp32), pl.Float64),
        col("n_forward", np(result.n_forward), pl.Int64),
        col("n_backward", np(result.n_backward), pl.Int64),
        col("n_queries", np(result.n_queries), pl.Int64),
        col("n_verify", np(result.n_verify), pl.Int64),
        col("passes", np(result.passes), pl.Int64),
        col("zero_grad_steps", np(result.zero_grad_steps), pl.Int64),
        col("nonfinite_steps", np(result.nonfinite_steps), pl.Int64),
        col("flag_zero_grad", np(result.flag_zero_grad), pl.Boolean),
        col("flag_nonfinite", np(result.flag_nonfinite), pl.Boolean),
        col("guard_broken", np(result.guard_broken), pl.Boolean),
        col("randomized", [result.randomized] * n, pl.Boolean),
    ])


def run_fast_cell(suite: SuiteParams, model_key: str, *, data_path: Path, out: Path,
                  timing_out: Path) -> pl.DataFrame:
    """Run the preset on the model's evaluation points; write the Parquet and the wall time."""
    if model_key not in suite.models:
        raise ValueError(f"model {model_key!r} is not in the grid ({', '.join(suite.models)})")
    device = resolve_device(suite.device)
    ds_key, ds = suite.dataset_of(model_key)
    x, y = load_eval_points(data_path, ds.n_examples)
    model = load_model(model_key, *suite.model_and_dataset(model_key)).to(device)
    fp = suite.fast
    config = preset_config(fp, ds.eps)
    t0 = time.perf_counter()
    result = run_fast(model, x.to(device), y.to(device), config)
    wall = time.perf_counter() - t0
    split = split_labels(y.shape[0], fp.split_seed, fp.tuning_fraction)
    meta = {"suite": suite.name, "dataset": ds_key, "model": model_key}
    frame = fast_frame(result, y, split, config, meta)
    write_parquet(frame, out)
    write_json({"model": model_key, "preset": config.name, "total": round(wall, 4)}, timing_out)
    return frame


def evaluate_rows(model: torch.nn.Module, x: Tensor, y: Tensor, config: FastConfig,
                  meta: dict) -> pl.DataFrame:
    """Adapter for ``tmifpe evaluate --attack fast``: run the preset, return the per-example
    frame (every point labelled held-out: no split outside the pipeline)."""
    result = run_fast(model, x, y, config)
    return fast_frame(result, y, [HELD_OUT] * y.shape[0], config, meta)
