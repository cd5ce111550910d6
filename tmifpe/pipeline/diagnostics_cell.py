"""The diagnostics cell of one model: the suite's plan, its points and model, the runner
:func:`tmifpe.evaluation.diagnostics.run_diagnostics`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tmifpe.data.sources import load_eval_points
from tmifpe.diagnostics import OUT_DIR
from tmifpe.diagnostics.plan import (
    DEFAULT_TARGETS,
    MEASURED_PRECISIONS,
    POINT_STEPS,
    TRACE_STEPS,
    DiagnosticsPlan,
)
from tmifpe.evaluation.diagnostics import run_diagnostics
from tmifpe.models.zoo import load_model
from tmifpe.pipeline.config import SuiteParams
from tmifpe.precision import Precision


def plan_from_suite(suite: SuiteParams, model: str) -> DiagnosticsPlan:
    """eps of the model's dataset, attack schedule/momentum/seed/t* rule, the suite's losses,
    the measured precisions of the suite (fp16/bf16/fp32; fp64 is the reference), PGD point
    sets after ``POINT_STEPS`` steps, the t* trace over ``TRACE_STEPS`` steps. Fixed step
    counts, not the suite's budgets: adding a budget must not re-run the diagnostics."""
    _, ds = suite.dataset_of(model)
    precisions = tuple(p for p in MEASURED_PRECISIONS if p in suite.precisions)
    fp32 = suite.precisions.get(Precision.FP32)
    return DiagnosticsPlan(
        eps=ds.eps, schedule=suite.attack.schedule, momentum=suite.attack.momentum,
        seed=suite.attack.seed, tstar_rule=suite.attack.tstar_rule, losses=tuple(suite.losses),
        precisions=precisions or (Precision.FP32,), point_steps=POINT_STEPS,
        trace_steps=TRACE_STEPS,
        n_targets=fp32.n_targets if fp32 and fp32.n_targets else DEFAULT_TARGETS)


def run_diagnostics_cell(suite: SuiteParams, model_key: str, *,
                         data_dir: Path = Path("data/eval"), root: Path = OUT_DIR
                         ) -> dict[str, Any]:
    """Measure ``model_key`` on its dataset's evaluation points (CPU) and write the three
    outputs under ``root``; returns the JSON document."""
    if model_key not in suite.models:
        raise ValueError(f"model {model_key!r} is not in the grid of suite {suite.name!r}; "
                         f"expected one of: {', '.join(suite.models)}")
    ds_key, ds = suite.dataset_of(model_key)
    x, y = load_eval_points(data_dir / f"{ds_key}.pt", ds.n_examples)
    model = load_model(model_key, *suite.model_and_dataset(model_key))
    return run_diagnostics(model, x, y, plan_from_suite(suite, model_key), dataset=ds_key,
                           model_name=model_key, root=root, threads=suite.threads)
