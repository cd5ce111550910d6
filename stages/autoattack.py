"""DVC stage `autoattack`: standard AutoAttack on one model -> results/autoattack/<model>."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.pipeline.autoattack_cell import run_autoattack_cell
from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.stage_support import run_stage


def main(model: str = typer.Option(..., help="model key of the active suite")) -> None:
    def body(suite: SuiteParams) -> None:
        if model not in suite.models:
            raise ValueError(f"model {model!r} is not in the grid ({', '.join(suite.models)})")
        ds_key, _ = suite.dataset_of(model)
        out = Path("results/autoattack") / f"{model}.parquet"
        frame = run_autoattack_cell(suite, model, data_path=Path("data/eval") / f"{ds_key}.pt",
                                    out=out, timing_out=out.with_suffix(".timing.json"))
        robust = frame["robust_fp32"].mean()
        print(f"autoattack {model}: robust accuracy {robust:.4f} ({frame.height} points)")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
