"""DVC stage `ablations`: T-MIFPE phase detection, t* rules, PGD vs APGD for one model ->
results/ablations/<model>.parquet (+ .timing.json with the wall times)."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.choices import check_choice
from tmifpe.pipeline.ablations import run_ablations
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.stage_support import run_stage

OUT_DIR = Path("results/ablations")


def main(model: str = typer.Option(..., help="model key of the active suite")) -> None:
    def body(suite: SuiteParams) -> None:
        check_choice(model, suite.models, "model")
        ds_key, _ = suite.dataset_of(model)
        out = OUT_DIR / f"{model}.parquet"
        frame = run_ablations(suite, model, data_path=Path("data/eval") / f"{ds_key}.pt",
                              out=out, timing_out=OUT_DIR / f"{model}.timing.json",
                              budgets=suite.ablations.budgets,
                              precisions=suite.ablations.precisions)
        print(f"ablations {model}: {frame.height} rows -> {out}")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
