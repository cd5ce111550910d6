"""DVC stage `model`: train (or fetch and check) one model -> models/<key>.json (+ .pt)."""

from __future__ import annotations

from pathlib import Path

import typer

from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.model_stage import prepare_model
from tmifpe.pipeline.stage_support import run_stage


def main(model: str = typer.Option(..., help="model key of the active suite")) -> None:
    def body(suite: SuiteParams) -> None:
        manifest = prepare_model(suite, model, data_dir=Path("data/eval"), out_dir=Path("models"))
        print(f"model {model}: clean accuracy {manifest['clean_accuracy']:.4f} "
              f"on {manifest['n_eval']} evaluation points")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
