"""The fast-preset cell of one model: the preset on exactly the attack cells' points, every
verdict re-verified, written per example with its tuning/held-out split."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch
from torch import Tensor

from tmifpe.attacks.fast import FastConfig, Kind, Phase
from tmifpe.data.sources import load_eval_points
from tmifpe.evaluation.fast import HELD_OUT, TUNING, run_fast_eval
from tmifpe.models.zoo import load_model
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.fast_config import FastParams
from tmifpe.precision import check_deterministic
from tmifpe.storage import write_json, write_parquet

__all__ = ["HELD_OUT", "TUNING", "preset_config", "run_fast_cell", "split_labels",
           "tuning_mask"]


def preset_config(params: FastParams, eps: float) -> FastConfig:
    """The preset the suite's ``fast:`` section describes, at ``eps``."""
    phases = tuple(Phase(Kind(p.kind), p.steps, p.loss.value, p.n_targets, p.restarts,
                         p.targets, p.focus) for p in params.phases)
    return FastConfig(eps=eps, phases=phases, guard_queries=params.guard_queries,
                      guard_p_init=params.guard_p_init, escalate_queries=params.escalate_queries,
                      tstar_rule=params.tstar_rule,
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


def run_fast_cell(suite: SuiteParams, model_key: str, *, data_path: Path, out: Path,
                  timing_out: Path) -> pl.DataFrame:
    """Run the preset (:func:`tmifpe.evaluation.fast.run_fast_eval`) on the model's evaluation
    points; write the Parquet (environment in its metadata) and the wall time."""
    if model_key not in suite.models:
        raise ValueError(f"model {model_key!r} is not in the grid ({', '.join(suite.models)})")
    ds_key, ds = suite.dataset_of(model_key)
    x, y = load_eval_points(data_path, ds.n_examples)
    fp = suite.fast
    config = preset_config(fp, ds.eps)
    split = split_labels(y.shape[0], fp.split_seed, fp.tuning_fraction)
    model = load_model(model_key, *suite.model_and_dataset(model_key))
    check_deterministic(model, x, name=model_key)
    run = run_fast_eval(model, x, y, config, dataset=ds_key,
                        model_name=model_key, split=split, device=suite.device,
                        threads=suite.threads)
    write_parquet(run.frame, out, metadata={"environment": run.environment})
    write_json({"model": model_key, "preset": config.name, "total": round(run.wall_time_s, 4)},
               timing_out)
    return run.frame
