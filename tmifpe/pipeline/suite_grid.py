"""The ``grid`` section of params.yaml, derived from a suite: what DVC's stages iterate over.

DVC's templating cannot look a model's dataset up (``${suite.model_zoo.${item.model}}`` does not
nest) nor compare a budget with a precision cap, so both are computed here and written into
params.yaml next to the suite when DVC composes it (``dvc exp run``, via the Hydra resolver
``tmifpe_grid`` in ``hydra_plugins/tmifpe_grid``). Each stage then depends on its own entries:

- ``models.<model>``: the model's dataset key (foreach of model, autoattack, diagnostics,
  ablations);
- ``cells.<model>-<loss>``: the attack stages, named exactly like them; each runs the cell
  (model × loss × budget) of every budget, so the fixed cost of a stage (interpreter, torch,
  DVC's bookkeeping: seconds each) is paid once per model × loss, not once per budget;
- ``precisions.b<budget>``: the precisions a budget runs at (caps applied) with their settings
  (what an attack stage depends on, with the budgets);
- ``precision_settings``: every precision's settings without caps (diagnostics, ablations).

Pure and stdlib-only (the resolver loads this file by path, inside DVC's process);
``tmifpe.pipeline.config`` checks a loaded params.yaml against it, so a hand-edited suite with a
stale grid is an error rather than a silently wrong dependency graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# == list(tmifpe.precision.Precision)
PRECISION_ORDER = ("fp16", "bf16", "fp32", "fp64", "amp-fp16", "amp-bf16")


def _dict(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else []


def precision_plan(precisions: Mapping[str, Any], budget: int) -> dict[str, dict[str, Any]]:
    """Precisions whose ``max_budget`` admits ``budget`` (None: no cap), in canonical order,
    each with the settings an attack cell uses (``n_targets``, ``n_examples``)."""
    order = {p: i for i, p in enumerate(PRECISION_ORDER)}
    plan = {}
    for prec in sorted(precisions, key=lambda p: (order.get(p, len(order)), str(p))):
        pp = _dict(precisions[prec])
        cap = pp.get("max_budget")
        if cap is None or (isinstance(budget, int) and isinstance(cap, int) and budget <= cap):
            plan[str(prec)] = {"n_targets": pp.get("n_targets"), "n_examples": pp.get("n_examples")}
    return plan


def derive_grid(suite: Mapping[str, Any]) -> dict[str, Any]:
    """The grid section for ``suite`` (a raw mapping; tolerant of invalid input, which
    ``tmifpe.pipeline.config`` reports with proper messages)."""
    zoo = _dict(suite.get("model_zoo"))
    models = [m for m in _list(suite.get("models")) if isinstance(m, str)]
    dataset = {m: _dict(zoo.get(m)).get("dataset") for m in models}
    budgets = _list(suite.get("budgets"))
    cells = {f"{m}-{loss}": {"model": m, "loss": loss, "dataset": dataset[m]}
             for m in models for loss in _list(suite.get("losses"))}
    precisions = _dict(suite.get("precisions"))
    return {
        "models": {m: {"dataset": dataset[m]} for m in models},
        "cells": cells,
        "precisions": {f"b{b}": precision_plan(precisions, b) for b in budgets},
        # every precision's settings without its cap: for stages that ignore budgets' caps
        "precision_settings": precision_plan(
            {p: {**_dict(pp), "max_budget": None} for p, pp in precisions.items()}, 0),
    }
