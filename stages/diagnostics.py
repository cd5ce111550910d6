"""DVC stage `diagnostics`: gradient error vs float64 and the T-MIFPE t* trace of one model
(:func:`tmifpe.pipeline.diagnostics_cell.run_diagnostics_cell`)."""

from __future__ import annotations

import time

import typer

from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.diagnostics_cell import run_diagnostics_cell


def main(model: str = typer.Option(..., help="model key of the active suite")) -> None:
    def body(suite: SuiteParams) -> None:
        t0 = time.perf_counter()
        doc = run_diagnostics_cell(suite, model)
        summary = ", ".join(f"{v['check']}/{v['loss']}/{v['precision']}"
                            f"{'/t' if v['targeted'] else ''}: {v['verdict']}"
                            for v in doc["verdicts"])
        print(f"diagnostics {model}: {time.perf_counter() - t0:.1f} s; {summary}")

    from tmifpe.pipeline.stage_support import run_stage

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
