"""Small suites for tests: complete a partial suite mapping with explicit test values, and write
params.yaml as DVC's Hydra composition would (``suite`` + the derived ``grid``).

The product has no defaults for settings that change results (tmifpe/pipeline/config.py); tests keep
their fixtures short by naming only what they vary, and this fills the rest, explicitly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tmifpe.pipeline.suite_grid import derive_grid

TOP = {"device": "cpu", "threads": 1, "hash_seed": 0, "data_dir": "data/raw"}
ATTACK = {"schedule": "cosine", "momentum": 0.75, "restarts": 1, "batch_size": 500,
          "tstar_rule": "coef", "seed": 0}
AUTOATTACK = {"seed": 0, "batch_size": 500}
ABLATIONS = {"budgets": [20], "precisions": ["fp32"]}
# a tiny fast preset (the suites' own is in conf/suite/*.yaml)
FAST = {"phases": [{"kind": "untargeted", "steps": 3, "loss": "tmifpe", "n_targets": 0,
                    "restarts": 1}],
        "guard_queries": 10, "guard_p_init": 0.8, "tstar_rule": "coef", "split_seed": 0,
        "tuning_fraction": 0.5, "batch_size": 500, "seed": 0}
TRAINING = {"arch": "small_cnn", "epochs": 10, "lr": 0.001, "batch_size": 64, "adv_eps": 0.0,
            "adv_steps": 7, "seed": 0}
DIGITS_SPLIT = {"test_size": 0.25, "split_seed": 0}
PRECISION = {"max_budget": None, "n_targets": 9, "n_examples": None}


def complete(partial: dict[str, Any]) -> dict[str, Any]:
    """``partial`` with every missing setting filled from the values above (a new mapping)."""
    suite = copy.deepcopy(partial)
    for key, value in TOP.items():
        suite.setdefault(key, value)
    for key, base in (("attack", ATTACK), ("autoattack", AUTOATTACK), ("ablations", ABLATIONS),
                      ("fast", FAST)):
        suite[key] = {**base, **suite.get(key, {})}
    for ds in suite.get("datasets", {}).values():
        if ds.get("source") == "digits":
            for key, value in DIGITS_SPLIT.items():
                ds.setdefault(key, value)
    for model in suite.get("model_zoo", {}).values():
        if model.get("source") == "trained":
            for key, value in TRAINING.items():
                model.setdefault(key, value)
    suite["precisions"] = {p: {**PRECISION, **pp} for p, pp in suite.get("precisions", {}).items()}
    return suite


def params_document(partial: dict[str, Any]) -> dict[str, Any]:
    suite = complete(partial)
    return {"suite": suite, "grid": derive_grid(suite)}


def write_params(path: Path, partial: dict[str, Any]) -> dict[str, Any]:
    """Write params.yaml for ``partial`` (completed) at ``path``; returns the document."""
    doc = params_document(partial)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc
