"""Pure cast vs autocast, side by side: robust accuracy of each attack at fp16 beside amp-fp16
and bf16 beside amp-bf16 (fp32 and fp64 for reference), with the precision symptoms of each pair
and CE's top-2 gap limits of docs/theory.md §3 in the pure-cast columns only (under
``torch.autocast`` the loss is computed in fp32, so they do not apply). Built from the aggregate
``precision_effect`` frame; rendered by :mod:`tmifpe.report.html` and :mod:`tmifpe.report.latex`
(one row per model × attack × budget × dtype pair, so that it fits a printed page).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tmifpe.losses.tmifpe.tstar import gap_thresholds
from tmifpe.precision import Precision
from tmifpe.report.views import DIGITS, attack_name, attack_rank, model_label, models

DASH = "–"
PAIRS = ((Precision.FP16, Precision.AMP_FP16), (Precision.BF16, Precision.AMP_BF16))
REFERENCES = (Precision.FP32, Precision.FP64)
SYMPTOMS = (("n_dtype_only_examples", "Dtype-only hits"),
            ("n_missed_examples", "Missed hits"),
            ("nonfinite_steps", "Non-finite steps"))


@dataclass(frozen=True)
class Group:
    """Value columns under one spanning header."""

    label: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class GroupedTable:
    """A table whose value columns sit under spanning group headers; ``rows`` hold the lead
    cells then one formatted cell per group column, in order."""

    key: str
    title: str
    note: str
    lead: tuple[str, ...]
    lead_numeric: tuple[bool, ...]  # right-aligned lead columns
    groups: tuple[Group, ...]
    rows: tuple[tuple[str, ...], ...]
    empty: str = "No rows."

    @property
    def width(self) -> int:
        return len(self.lead) + sum(len(g.columns) for g in self.groups)


def ce_limits(precision: Precision) -> str:
    """``"7.62 / 17.33"``: CE's top-2 gap limits of a pure dtype (true-class term rounds to 0 /
    whole gradient underflows; docs/theory.md §3). Not defined under autocast (ValueError)."""
    if precision.autocast:
        raise ValueError(f"CE's gap limits are for the pure dtypes, got {precision.value}")
    rounding, underflow = gap_thresholds(precision.dtype)
    return f"{rounding:.{DIGITS}f} / {underflow:.{DIGITS}f}"


def _pct(run: dict | None, n: int) -> str:
    """Robust accuracy in %, with `` (n=360)`` when ``run`` has another number of points."""
    if run is None or run["robust_acc"] is None:
        return DASH
    other = "" if run["n"] == n else f" (n={run['n']})"
    return f"{100.0 * run['robust_acc']:.{DIGITS}f}{other}"


def _pp(a: dict, b: dict) -> str:
    """b − a in percentage points (same points only; else a dash)."""
    if a["n"] != b["n"] or a["robust_acc"] is None or b["robust_acc"] is None:
        return DASH
    return f"{100.0 * (b['robust_acc'] - a['robust_acc']):+.{DIGITS}f}"


def _pair_counts(pure: dict, amp: dict, column: str) -> str:
    return " / ".join(DASH if r[column] is None else str(r[column]) for r in (pure, amp))


def family_table(tables: dict[str, pl.DataFrame]) -> GroupedTable:
    """One row per model × attack × budget × (pure, autocast) pair that both ran."""
    runs: dict[tuple, dict[str, dict]] = {}
    for r in tables["precision_effect"].iter_rows(named=True):
        key = (r["suite"], r["dataset"], r["model"], r["loss"], r["targeted"], r["budget"])
        runs.setdefault(key, {})[r["precision"]] = r
    all_models = models(tables)
    order = {m: i for i, m in enumerate(all_models)}
    rows = []
    for key in sorted(runs, key=lambda k: (order.get(k[:3], len(order)),
                                           attack_rank(k[3:5]), k[5])):
        by = runs[key]
        for pure, amp in PAIRS:
            if pure.value not in by or amp.value not in by:
                continue
            a, b = by[pure.value], by[amp.value]
            n = a["n"]
            rows.append((
                model_label(key[:3], all_models), attack_name(key[3], key[4]), str(key[5]),
                str(n), f"{pure.value} / {amp.value}", ce_limits(pure), _pct(a, n), _pct(b, n),
                _pp(a, b), *(_pct(by.get(p.value), n) for p in REFERENCES),
                *(_pair_counts(a, b, column) for column, _ in SYMPTOMS)))
    groups = (
        Group("Pure cast", ("CE gap limits", "Robust %")),
        Group("Autocast", ("Robust %", "− pure (pp)")),
        Group("Reference robust %", tuple(p.value for p in REFERENCES)),
        Group("Pure / autocast", tuple(label for _, label in SYMPTOMS)),
    )
    return GroupedTable(
        key="families", title="Pure cast vs autocast",
        note=("Robust accuracy (%) of each attack with the model and loss cast to fp16/bf16 "
              "(pure cast) beside the same attack under torch.autocast (amp-fp16/amp-bf16: "
              "float32 weights, convolutions and matmuls in fp16/bf16), fp32 and fp64 for "
              "reference, wherever a pure low precision and its autocast counterpart both ran; "
              "verdicts re-verified at fp32. Points: those of the pure-cast run; a run on "
              "another number of points (e.g. fp32 on a larger set) shows its own as "
              "(n=points) and is not a like-for-like comparison. CE gap limits (pure cast "
              "only): the top-2 logit gaps of docs/theory.md §3 beyond which CE's true-class "
              "gradient term rounds to 0 / the whole gradient underflows in that dtype. They do "
              "not apply under autocast: there the loss is computed in fp32 and only its "
              "gradient is cast to fp16/bf16 (benchmarks/device_check.py measures where that "
              "gradient vanishes). Pure / autocast: points with at least one dtype-only hit "
              "(the attack's precision called an iterate misclassified, a fresh fp32 pass did "
              "not), points with at least one missed hit (the mirror), and skipped non-finite "
              "steps."),
        lead=("Model", "Attack", "Budget", "Points", "Pair"),
        lead_numeric=(False, False, True, True, False),
        groups=groups, rows=tuple(rows),
        empty="No model × attack × budget ran both a pure low precision and its autocast mode.")
