"""The files the current grid defines: aggregation reads exactly these, never a folder glob."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tmifpe.pipeline.cell import CellSpec
from tmifpe.pipeline.config import SuiteParams


@dataclass(frozen=True)
class GridFiles:
    cells: list[Path]
    autoattack: list[Path]
    timings: list[Path]


def grid_files(suite: SuiteParams) -> GridFiles:
    cells, timings = [], []
    for model in suite.models:
        for loss in suite.losses:
            for budget in suite.budgets:
                out, timing = CellSpec(model, loss, budget).outputs()
                cells.append(out)
                timings.append(timing)
    aa = [Path("results/autoattack") / f"{m}.parquet" for m in suite.models]
    timings += [p.with_suffix(".timing.json") for p in aa]
    return GridFiles(cells, aa, timings)


def robustbench_ids(suite: SuiteParams) -> dict[str, tuple[str, str]]:
    """Grid key -> (dataset source, RobustBench id) for models with a leaderboard entry."""
    out = {}
    for key in suite.models:
        params = suite.model_zoo[key]
        if params.source == "robustbench" and params.id:
            out[key] = (suite.dataset_of(key)[1].source, params.id)
    return out


def leaderboard() -> dict[str, Any]:
    return json.loads(resources.files("tmifpe").joinpath("leaderboard.json").read_text())
