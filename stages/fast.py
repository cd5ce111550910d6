"""DVC stage `fast`: the fast attack preset on one model -> results/fast/<model>."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.fast_cell import run_fast_cell
from tmifpe.pipeline.stage_support import run_stage


def main(model: str = typer.Option(..., help="model key of the active suite")) -> None:
    def body(suite: SuiteParams) -> None:
        ds_key, _ = suite.dataset_of(model) if model in suite.model_zoo else ("", None)
        out = Path("results/fast") / f"{model}.parquet"
        frame = run_fast_cell(suite, model, data_path=Path("data/eval") / f"{ds_key}.pt",
                              out=out, timing_out=out.with_suffix(".timing.json"))
        robust = frame["robust_fp32"].mean()
        print(f"fast {model}: robust accuracy {robust:.4f} ({frame.height} points)")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
