"""DVC stage `data`: the evaluation (and training) tensors of one dataset -> data/eval/<key>.pt."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.choices import check_choice
from tmifpe.data.build import build_dataset
from tmifpe.data.sources import save_tensors
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.stage_support import run_stage


def main(dataset: str = typer.Option(..., help="dataset key of the active suite")) -> None:
    def body(suite: SuiteParams) -> None:
        check_choice(dataset, suite.datasets, "dataset")
        tensors = build_dataset(suite.datasets[dataset], Path(suite.data_dir))
        save_tensors(tensors, Path("data/eval") / f"{dataset}.pt")
        print(f"data {dataset}: {tensors['x_test'].shape[0]} evaluation points")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
