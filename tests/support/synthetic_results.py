"""Result files following docs/results-schema.md, built by hand or from a seeded toy model of
attack strength: for tests of the aggregation and the reports, and for a demo report.

Nothing here is a measurement: the demo numbers are drawn from a fixed random generator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tmifpe.evaluation.schema import AA_SCHEMA, CELL_SCHEMA

CELL_DEFAULTS = {
    "dataset": "digits", "restarts": 1, "n_targets": 0, "eps": 0.3,
    "seed": 0, "label": 0, "attack_success": False, "valid": True, "false_success": False,
    "fp32_fp64_disagree": False, "first_success_iter": -1, "success_target": -1,
    "margin_fp32": 1.0, "margin_fp64": 1.0, "n_forward": 0, "n_backward": 0,
    "zero_grad_steps": 0, "nonfinite_steps": 0, "dtype_only_hits": 0, "missed_hits": 0,
    "nonfinite_fp32": False,
    "nonfinite_fp64": False,
}
AA_DEFAULTS = {
    "dataset": "digits", "eps": 0.3, "seed": 0, "batch_size": 250,
    "label": 0, "broken_by": "", "robust_after_apgd_ce": True, "robust_after_apgd_t": True,
    "robust_after_fab_t": True, "robust_after_square": True, "valid": True, "margin_fp32": 1.0,
    "n_grad": 0, "n_queries": 0, "nonfinite_fp32": False, "nonfinite_fp64": False,
}


@dataclass(frozen=True)
class ResultFiles:
    """The files of one grid, as ``aggregate`` takes them."""

    cell_files: list[Path]
    aa_files: list[Path]
    timing_files: list[Path]


def cell_frame(rows: Sequence[dict], **common: object) -> pl.DataFrame:
    """An attack-cell frame with every documented column: each row is ``CELL_DEFAULTS``,
    updated by ``common``, then by the row; ``robust_fp64`` defaults to ``robust_fp32``."""
    full = []
    for row in rows:
        merged = {**CELL_DEFAULTS, **common, **row}
        merged.setdefault("robust_fp64", merged["robust_fp32"])
        full.append(merged)
    return pl.DataFrame(full, schema=CELL_SCHEMA, orient="row")


def aa_frame(rows: Sequence[dict], **common: object) -> pl.DataFrame:
    """An AutoAttack frame with every documented column (defaults as for ``cell_frame``)."""
    full = []
    for row in rows:
        merged = {**AA_DEFAULTS, **common, **row}
        merged.setdefault("robust_fp64", merged["robust_fp32"])
        full.append(merged)
    return pl.DataFrame(full, schema=AA_SCHEMA, orient="row")


def write_cell(frame: pl.DataFrame, root: Path) -> Path:
    """Write one cell to ``<root>/attack/<model>/<loss>/b<budget>.parquet`` (sorted rows)."""
    ident = frame.select("model", "loss", "budget").unique().row(0)
    path = Path(root) / "attack" / ident[0] / ident[1] / f"b{ident[2]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.sort("precision", "targeted", "example").write_parquet(path)
    return path


def write_autoattack(frame: pl.DataFrame, root: Path) -> Path:
    """Write one model's AutoAttack rows to ``<root>/autoattack/<model>.parquet``."""
    path = Path(root) / "autoattack" / f"{frame['model'][0]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.sort("example").write_parquet(path)
    return path


def write_timing(result_file: Path, content: list | dict) -> Path:
    """Write the ``.timing.json`` beside a result file."""
    path = result_file.with_name(result_file.name.removesuffix(".parquet") + ".timing.json")
    path.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ seeded demo grid
LOSS_STRENGTH = {"ce": 0.50, "cw": 0.56, "dlr": 0.58, "mifpe": 0.60, "tmifpe": 0.64}
PRECISION_PENALTY = {"fp16": 0.10, "bf16": 0.06, "fp32": 0.0, "fp64": 0.0}
AUTOCAST_PENALTY = {"amp-fp16": 0.04, "amp-bf16": 0.03}  # pass with PRECISION_PENALTY
LOW_PRECISIONS = ("fp16", "bf16", "amp-fp16", "amp-bf16")
DEMO_MODELS = {"digits_std": ("digits", 0.93, 0.55), "cifar10_wong": ("cifar10", 0.83, 0.48)}


def demo_results(
    root: Path,
    *,
    models: dict[str, tuple[str, float, float]] | None = None,
    budgets: Sequence[int] = (10, 50),
    n_examples: int = 40,
    seed: int = 0,
    precisions: dict[str, float] | None = None,
) -> ResultFiles:
    """Write a full toy grid (models × 5 losses × budgets × 4 precisions × targeted/untargeted
    plus AutoAttack and timing files) under ``root``. ``models``: key → (dataset, clean rate,
    AutoAttack strength); ``precisions``: name → strength penalty (default
    ``PRECISION_PENALTY``; add ``AUTOCAST_PENALTY`` for the amp-* modes)."""
    rng = np.random.default_rng(seed)
    files = ResultFiles([], [], [])
    for model, (dataset, clean_rate, aa_strength) in (models or DEMO_MODELS).items():
        clean = rng.random(n_examples) < clean_rate
        hardness = rng.random(n_examples)
        common = {"model": model, "dataset": dataset}
        for loss, strength in LOSS_STRENGTH.items():
            for budget in budgets:
                frame, timing = _demo_cell(clean, hardness, loss, strength, budget, common,
                                           precisions or PRECISION_PENALTY)
                path = write_cell(frame, root)
                files.cell_files.append(path)
                files.timing_files.append(write_timing(path, timing))
        path = write_autoattack(_demo_aa(clean, hardness, aa_strength, common), root)
        files.aa_files.append(path)
        files.timing_files.append(write_timing(path, {"apgd-ce": 2.0, "total": 9.5}))
    return files


def _demo_cell(
    clean: np.ndarray, hardness: np.ndarray, loss: str, strength: float, budget: int,
    common: dict, penalties: dict[str, float] = PRECISION_PENALTY,
) -> tuple[pl.DataFrame, list[dict]]:
    rows, timing = [], []
    for precision, penalty in penalties.items():
        for targeted in (False, True):
            s = strength + 0.03 * targeted + 0.02 * np.log10(budget) - penalty
            n_targets = 3 if targeted else 0
            for i, (cc, h) in enumerate(zip(clean, hardness, strict=True)):
                rows.append(_demo_row(i, bool(cc), float(h), s, budget, precision, n_targets))
            timing.append({"precision": precision, "targeted": targeted,
                           "n_examples": len(clean), "n_attacked": int(clean.sum()),
                           "wall_time_s": round(0.002 * budget * len(clean) * (1 + n_targets), 6)})
    return cell_frame(rows, loss=loss, budget=budget, targeted=False, **common), timing


def _demo_row(
    i: int, cc: bool, h: float, s: float, budget: int, precision: str, n_targets: int
) -> dict:
    broken = cc and h < s
    low = precision in LOW_PRECISIONS
    runs = max(n_targets, 1)
    margin = (h - s) * 4.0
    row = {
        "example": i, "label": i % 10, "precision": precision, "targeted": n_targets > 0,
        "n_targets": n_targets, "clean_correct": cc, "robust_fp32": cc and not broken,
        "attack_success": broken,
        "dtype_only_hits": 1 + i % 3 if (cc and low and s <= h < s + 0.04) else 0,
        "first_success_iter": int(budget * (h / s) ** 2) if broken else -1,
        "margin_fp32": margin, "margin_fp64": margin,
        "n_forward": runs * (budget + 1) if cc else 1, "n_backward": runs * budget if cc else 0,
        "zero_grad_steps": (i % 4) * budget // 10 if (cc and low) else 0,
    }
    row["false_success"] = row["attack_success"] and not broken
    if precision == "fp16" and cc and i % 13 == 5:
        row["nonfinite_steps"] = 1 + i % 3
        row["margin_fp32"] = float("nan")
    return row


def _demo_aa(
    clean: np.ndarray, hardness: np.ndarray, strength: float, common: dict
) -> pl.DataFrame:
    rows = []
    for i, (cc, h) in enumerate(zip(clean, hardness, strict=True)):
        broken = bool(cc) and h < strength
        survives = bool(cc) and not broken
        stage = ("apgd-ce" if h < 0.8 * strength else "apgd-t") if broken else ""
        rows.append({
            "example": i, "label": i % 10, "clean_correct": bool(cc), "broken_by": stage,
            "robust_after_apgd_ce": bool(cc) and stage != "apgd-ce",
            "robust_after_apgd_t": survives, "robust_after_fab_t": survives,
            "robust_after_square": survives, "robust_fp32": survives,
            "margin_fp32": float(h - strength), "n_grad": 100 if stage == "apgd-ce" else 1900,
            "n_queries": 5000 if survives else 0,
        })
    return aa_frame(rows, **common)
