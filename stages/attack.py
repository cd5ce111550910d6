"""DVC stage `attack`: the cells (model × loss × budget) of one model and loss, every budget
of the suite -> results/attack/<model>/<loss>/b<N>.parquet (+ b<N>.timing.json)."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.losses import parse_loss
from tmifpe.models.zoo import load_model, model_files
from tmifpe.pipeline.cell import CellSpec, run_attack_cell
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.stage_support import run_stage


def main(model: str = typer.Option(...), loss: str = typer.Option(...)) -> None:
    def body(suite: SuiteParams) -> None:
        loss_name = parse_loss(loss)
        if model not in suite.models or loss_name not in suite.losses:
            raise ValueError(f"attack stage {model}-{loss} is not in the grid of suite "
                             f"{suite.name!r}: models {', '.join(suite.models)}; losses "
                             f"{', '.join(x.value for x in suite.losses)}")
        ds_key, _ = suite.dataset_of(model)
        net = load_model(model, *suite.model_and_dataset(model))  # once for every budget
        for budget in suite.budgets:
            spec = CellSpec(model, loss_name, budget)
            out, timing = spec.outputs()
            frame = run_attack_cell(suite, spec, data_path=Path("data/eval") / f"{ds_key}.pt",
                                    model_files=model_files(model), out=out,
                                    timing_out=timing, net=net)
            print(f"attack {spec.name}: {frame.height} rows -> {out}")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
