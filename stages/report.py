"""DVC stage `report`: aggregate tables -> reports/index.html and reports/tables.tex."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch
import typer

import tmifpe
from tmifpe import ablations_report
from tmifpe.aggregate import TABLE_KEYS
from tmifpe.config import SuiteParams
from tmifpe.diagnostics import output_paths as diagnostics_outputs
from tmifpe.diagnostics import report as diagnostics_report
from tmifpe.report import render_html, render_latex
from tmifpe.stage_support import run_stage


def main() -> None:
    def body(suite: SuiteParams) -> None:
        agg = Path("results/aggregate")
        tables = {name: pl.read_parquet(agg / f"{name}.parquet") for name in sorted(TABLE_KEYS)}
        eps = ", ".join(f"{k}: {d.eps:.6g}" for k, d in suite.datasets.items())
        meta = {"suite": suite.name, "eps (l-inf)": eps, "models": ", ".join(suite.models),
                "attack": f"PGD, {suite.attack.schedule.value} schedule, momentum "
                          f"{suite.attack.momentum}, {suite.attack.restarts} restart(s), "
                          f"seed {suite.attack.seed}, T-MIFPE rule {suite.attack.tstar_rule}",
                "autoattack": f"standard (pyautoattack 0.2.0), seed {suite.autoattack.seed}, "
                              f"batch size {suite.autoattack.batch_size}",
                "versions": f"tmifpe {tmifpe.__version__}, torch {torch.__version__}"}
        # sections of the per-model stages, read for exactly the models of the grid
        diag = [p for m in suite.models for p in diagnostics_outputs(m) if p.exists()]
        ablations = [p for m in suite.models
                     if (p := Path("results/ablations") / f"{m}.parquet").exists()]
        extra = [*diagnostics_report.tables(diag), *ablations_report.tables(ablations)]
        render_html(tables, Path("reports/index.html"),
                    title=f"tmifpe: floating-point error in attack gradients ({suite.name} suite)",
                    meta=meta, extra_tables=extra)
        render_latex(tables, Path("reports/tables.tex"))
        print("report: reports/index.html, reports/tables.tex")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
