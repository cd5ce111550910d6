"""DVC stage `aggregate`: per-example results of the grid -> results/aggregate/ + metrics.json."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.aggregate import aggregate, metrics_json, write_aggregates
from tmifpe.aggregate.fast import fast_files, load_validation, with_validation
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.grid import grid_files, leaderboard, robustbench_ids
from tmifpe.pipeline.stage_support import run_stage
from tmifpe.storage import write_json


def main() -> None:
    def body(suite: SuiteParams) -> None:
        files = grid_files(suite)
        tables = aggregate(files.cells, files.autoattack, files.timings,
                           leaderboard=leaderboard(), model_ids=robustbench_ids(suite),
                           fast_files=fast_files(suite.models), suite=suite.name)
        write_aggregates(tables, Path("results/aggregate"))
        write_json(with_validation(metrics_json(tables), load_validation()),
                   Path("results/metrics.json"))  # + the validation models (docs/fast.md)
        print(f"aggregate: {len(files.cells)} attack cells, "
              f"{len(files.autoattack)} AutoAttack runs")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
