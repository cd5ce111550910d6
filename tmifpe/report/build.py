"""The report from existing aggregate results: ``reports/index.html`` (+ PDF figures) and the
LaTeX tables. Called by the DVC stage ``report`` and by ``tmifpe report``."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import torch

import tmifpe
from tmifpe.aggregate import TABLE_KEYS
from tmifpe.aggregate.environment import environment_summary
from tmifpe.diagnostics import OUT_DIR as DIAGNOSTICS_DIR
from tmifpe.diagnostics import output_paths as diagnostics_outputs
from tmifpe.diagnostics import report as diagnostics_report
from tmifpe.pipeline.config import SuiteParams
from tmifpe.report import ablations as ablations_report
from tmifpe.report.html import render_html
from tmifpe.report.latex import render_latex
from tmifpe.report.plots import FIGURES_DIR, write_figures


def build_report(suite: SuiteParams, root: Path = Path(".")) -> list[Path]:
    """Render the report of ``suite`` from ``root/results``; returns the files written."""
    agg = root / "results/aggregate"
    missing = [n for n in sorted(TABLE_KEYS) if not (agg / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{agg}/{missing[0]}.parquet not found: run `dvc repro aggregate`"
                                " first (the report renders existing aggregate results)")
    tables = {name: pl.read_parquet(agg / f"{name}.parquet") for name in sorted(TABLE_KEYS)}
    eps = ", ".join(f"{k}: {d.eps:.6g}" for k, d in suite.datasets.items())
    meta = {"suite": suite.name, "eps (l-inf)": eps, "models": ", ".join(suite.models),
            "attack": f"PGD, {suite.attack.schedule.value} schedule, momentum "
                      f"{suite.attack.momentum}, {suite.attack.restarts} restart(s), "
                      f"seed {suite.attack.seed}, T-MIFPE rule {suite.attack.tstar_rule}",
            "autoattack": f"standard (pyautoattack 0.2.0), seed {suite.autoattack.seed}, "
                          f"batch size {suite.autoattack.batch_size}",
            "versions": f"tmifpe {tmifpe.__version__}, torch {torch.__version__} (report)"}
    env_lines, mixed = environment_summary(tables["environment"])
    meta["computed on"] = "; ".join(env_lines) or "no environment recorded"
    if mixed:
        meta["warning"] = (f"results from {len(env_lines)} environments are mixed: figures are "
                           "bitwise reproducible only within one hardware class and library "
                           "versions")
    # sections of the per-model stages, read for exactly the models of the grid
    diag = [p for m in suite.models
            for p in diagnostics_outputs(m, root / DIAGNOSTICS_DIR) if p.exists()]
    ablations = [p for m in suite.models
                 if (p := root / "results/ablations" / f"{m}.parquet").exists()]
    extra = [*diagnostics_report.tables(diag), *ablations_report.tables(ablations)]
    html = root / "reports/index.html"
    render_html(tables, html,
                          title=f"tmifpe: floating-point error in attack gradients "
                                f"({suite.name} suite)",
                          meta=meta, extra_tables=extra)
    tex = root / "reports/tables.tex"
    render_latex(tables, tex)
    figures = write_figures(tables, root / FIGURES_DIR)
    return [html, tex, tex.with_name("tables_standalone.tex"), *figures]
