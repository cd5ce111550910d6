"""DVC stage `attack`: one cell (model × loss × budget) -> results/attack/<model>/<loss>/b<N>."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.losses import parse_loss
from tmifpe.models.zoo import model_files
from tmifpe.pipeline.cell import CellSpec, run_attack_cell
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.stage_support import run_stage


def main(
    model: str = typer.Option(...), loss: str = typer.Option(...), budget: int = typer.Option(...)
) -> None:
    def body(suite: SuiteParams) -> None:
        spec = CellSpec(model, parse_loss(loss), budget)
        in_grid = (model in suite.models and spec.loss in suite.losses
                   and budget in suite.budgets)
        if not in_grid:
            raise ValueError(f"cell {spec.name} is not in the grid of suite {suite.name!r}")
        out, timing = spec.outputs()
        ds_key, _ = suite.dataset_of(model)
        frame = run_attack_cell(suite, spec, data_path=Path("data/eval") / f"{ds_key}.pt",
                                model_files=model_files(model), out=out, timing_out=timing)
        print(f"attack {spec.name}: {frame.height} rows -> {out}")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
