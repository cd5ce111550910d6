"""The diagnostics runner: gradient error against float64 and the T-MIFPE t* trace of one model.

Measures (:func:`tmifpe.diagnostics.plan.measure`, :func:`tmifpe.diagnostics.tstar_trace.
tstar_trace`) under the runtime contract (:func:`tmifpe.runtime.numerics`) and writes the three
outputs of :func:`tmifpe.diagnostics.output_paths` with the atomic writers of
:mod:`tmifpe.storage`: ``<model>.parquet`` (per gap bin), ``<model>.tstar.parquet`` (t*
quantiles) and ``<model>.json`` (agreement verdicts, the plan, the measured points and the
environment they were measured in). Schema: docs/results-schema.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from torch import Tensor, nn

from tmifpe.diagnostics import OUT_DIR, output_paths
from tmifpe.diagnostics.bins import bin_table, gap_bin_edges
from tmifpe.diagnostics.plan import DiagnosticsPlan, measure
from tmifpe.diagnostics.tstar_trace import summarise_tstar, tstar_trace
from tmifpe.diagnostics.verdicts import verdicts
from tmifpe.runtime import environment, numerics
from tmifpe.storage import write_json, write_parquet


def run_diagnostics(
    model: nn.Module, x: Tensor, y: Tensor, plan: DiagnosticsPlan, *, dataset: str,
    model_name: str, root: Path = OUT_DIR, threads: int | None = None,
) -> dict[str, Any]:
    """Measure ``model`` (eval mode, float32; not modified) on float32 ``x`` in [0,1] with int64
    labels ``y`` as ``plan`` says, write the three outputs of ``model_name`` under ``root`` and
    return the JSON document. Runs where ``x`` is (the thresholds are device-dependent)."""
    if any(m.training for m in model.modules()):
        raise ValueError("model must be in eval mode (train-mode layers change the gradients)")
    with numerics(threads):
        env = environment(x.device)
        examples, info = measure(model, x, y, plan)
        trace = tstar_trace(model, x, y, plan)
    edges = gap_bin_edges(plan.precisions)
    bins = _model_first(bin_table(examples, edges), model_name)
    tstar = _model_first(summarise_tstar(trace), model_name)
    doc = {"model": model_name, "dataset": dataset, "plan": plan.describe(),
           "bin_edges": [e if e != float("inf") else "inf" for e in edges], **info,
           "environment": env,
           "verdicts": verdicts(examples, plan.precisions, int(info["num_classes"]))}
    bins_out, tstar_out, json_out = output_paths(model_name, root)
    write_parquet(bins, bins_out)
    write_parquet(tstar, tstar_out)
    write_json(doc, json_out)
    return doc


def _model_first(frame: pl.DataFrame, model_name: str) -> pl.DataFrame:
    """``frame`` with a leading ``model`` column."""
    return frame.select(pl.lit(model_name).alias("model"), pl.all())


__all__ = ["run_diagnostics"]
