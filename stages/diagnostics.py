"""DVC stage `diagnostics`: gradient error vs float64 and the T-MIFPE t* trace of one model.

Outputs (written to temporary files and renamed, so a crash leaves nothing DVC could cache):
``results/diagnostics/<model>.parquet`` (per gap bin), ``<model>.tstar.parquet`` (t* quantiles)
and ``<model>.json`` (agreement verdicts, the plan and the measured points).
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl
import typer

from tmifpe.data.sources import load_eval_points
from tmifpe.diagnostics import OUT_DIR, output_paths
from tmifpe.diagnostics.gradient_error import (
    DiagnosticsPlan,
    bin_table,
    gap_bin_edges,
    measure,
    summarise_tstar,
    tstar_trace,
    verdicts,
)
from tmifpe.models.zoo import load_model
from tmifpe.pipeline.config import SuiteParams
from tmifpe.storage import write_json, write_parquet


def run_diagnostics(suite: SuiteParams, model_key: str, *, data_dir: Path = Path("data/eval"),
                    root: Path = OUT_DIR) -> dict[str, object]:
    """Measure, then write the three outputs of ``model_key``; returns the JSON document."""
    if model_key not in suite.models:
        raise ValueError(f"model {model_key!r} is not in the grid of suite {suite.name!r}")
    ds_key, ds = suite.dataset_of(model_key)
    x, y = load_eval_points(data_dir / f"{ds_key}.pt", ds.n_examples)
    model = load_model(model_key, *suite.model_and_dataset(model_key))
    plan = DiagnosticsPlan.from_suite(suite, model_key)
    examples, info = measure(model, x, y, plan)
    edges = gap_bin_edges(plan.precisions)
    bins = bin_table(examples, edges).with_columns(pl.lit(model_key).alias("model"))
    tstar = summarise_tstar(tstar_trace(model, x, y, plan)).with_columns(
        pl.lit(model_key).alias("model"))
    doc = {"model": model_key, "dataset": ds_key, "suite": suite.name, "plan": plan.describe(),
           "bin_edges": [e if e != float("inf") else "inf" for e in edges], **info,
           "verdicts": verdicts(examples, plan.precisions, int(info["num_classes"]))}
    bins_out, tstar_out, json_out = output_paths(model_key, root)
    write_parquet(bins.select(["model", *[c for c in bins.columns if c != "model"]]), bins_out)
    write_parquet(tstar.select(["model", *[c for c in tstar.columns if c != "model"]]), tstar_out)
    write_json(doc, json_out)
    return doc


def main(model: str = typer.Option(..., help="model key of the active suite")) -> None:
    def body(suite: SuiteParams) -> None:
        t0 = time.perf_counter()
        doc = run_diagnostics(suite, model)
        summary = ", ".join(f"{v['check']}/{v['loss']}/{v['precision']}"
                            f"{'/t' if v['targeted'] else ''}: {v['verdict']}"
                            for v in doc["verdicts"])
        print(f"diagnostics {model}: {time.perf_counter() - t0:.1f} s; {summary}")

    from tmifpe.pipeline.stage_support import run_stage

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
