"""The small metrics mapping for ``dvc metrics show``."""

from __future__ import annotations

import polars as pl

from tmifpe.aggregate.fast import fast_metrics
from tmifpe.aggregate.keys import attack_label

DIGITS = 4


def metrics_json(tables: dict[str, pl.DataFrame]) -> dict:
    """``{suite: {model: {<loss>_<targeted|untargeted>: {precision: acc}, "clean_acc": x,
    "autoattack_acc": y}}}``, fractions rounded to 4 decimals.

    The robust accuracy of an attack at a precision is the one at the largest budget that
    attack was run with at that precision (fp32 verdict, clean-incorrect counted non-robust).
    Models without AutoAttack results have no ``autoattack_acc``.
    """
    out: dict = {}
    runs = tables["robust_accuracy"].with_columns(attack_label().alias("attack"))
    last = runs.filter(
        pl.col("budget") == pl.col("budget").max().over("suite", "model", "attack", "precision")
    ).sort("suite", "model", "attack", "precision")
    for row in last.iter_rows(named=True):
        attack = _model(out, row).setdefault(row["attack"], {})
        attack[row["precision"]] = _round(row["robust_acc"])
    for row in tables["clean_accuracy"].sort("suite", "model").iter_rows(named=True):
        _model(out, row)["clean_acc"] = _round(row["clean_acc"])
    for row in tables["autoattack"].sort("suite", "model").iter_rows(named=True):
        _model(out, row)["autoattack_acc"] = _round(row["robust_acc"])
    for (suite, model), fast in fast_metrics(tables.get("fast", pl.DataFrame())).items():
        out.setdefault(suite, {}).setdefault(model, {})["fast"] = fast  # held-out points
    return _sorted(out)


def _model(out: dict, row: dict) -> dict:
    return out.setdefault(row["suite"], {}).setdefault(row["model"], {})


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def _sorted(value: object) -> object:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    return value
