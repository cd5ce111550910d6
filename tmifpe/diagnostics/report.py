"""Report tables of the diagnostics stage (``results/diagnostics/<model>{.parquet,.tstar.parquet,
.json}``) as :class:`tmifpe.report.detail.Table` objects, formatted deterministically."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tmifpe.report.detail import DASH, Table

PRECISION_ORDER = ("fp16", "bf16", "fp32", "fp64", "amp-fp16", "amp-bf16")
LOSS_LABELS = {"ce": "CE", "cw": "C&W", "dlr": "DLR", "mifpe": "MIFPE", "tmifpe": "T-MIFPE"}
COMPARED = ("ce", "mifpe", "tmifpe")
PHASE_LABELS = {1: "(i) untargeted, y on top", 2: "(ii) untargeted, y not on top",
                3: "(iii) targeted, target not on top", 4: "(iv) targeted, target on top"}


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100.0 * x:.1f}"


def _sci(x: float | None) -> str:
    if x is None or math.isnan(x):
        return DASH
    return "inf" if math.isinf(x) else f"{x:.2e}"


def _edge(x: float | None) -> str:
    if x is None:
        return "non-finite"
    return "∞" if math.isinf(x) else f"{x:.2f}"


def _files(paths: Sequence[Path]) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """Split paths (files or directories) into bins / t* / verdict files keyed by model."""
    bins, tstar, verdict = {}, {}, {}
    expanded: list[Path] = []
    for p in paths:
        expanded += sorted(p.iterdir()) if p.is_dir() else [p]
    for p in expanded:
        if p.name.endswith(".tstar.parquet"):
            tstar[p.name.removesuffix(".tstar.parquet")] = p
        elif p.suffix == ".parquet":
            bins[p.stem] = p
        elif p.suffix == ".json":
            verdict[p.stem] = p
    return bins, tstar, verdict


def gap_bin_table(bins: dict[str, Path]) -> Table:
    """Untargeted, phase (i), all point sets pooled: CE vs MIFPE vs T-MIFPE per precision × bin."""
    rows = []
    for model in sorted(bins):
        f = pl.read_parquet(bins[model]).filter(
            (pl.col("point_set") == "all") & ~pl.col("targeted") & (pl.col("phase") == 1)
            & pl.col("loss").is_in(COMPARED))
        by = {(r["loss"], r["precision"], r["bin"]): r for r in f.iter_rows(named=True)}
        keys = sorted({(p, b) for _, p, b in by},
                      key=lambda k: (PRECISION_ORDER.index(k[0]), k[1] < 0, k[1]))
        for prec, b in keys:
            ref = next(by[(loss, prec, b)] for loss in COMPARED if (loss, prec, b) in by)
            cells: list[str] = []
            for loss in COMPARED:
                r = by.get((loss, prec, b))
                cells += ([DASH] * 3 if r is None else
                          [_pct(r["frac_zero_grad"]), _sci(r["median_rel_err"]),
                           _fmt(r["median_cosine"])])
            rng = (DASH if ref["bin_lo"] is None
                   else f"[{_edge(ref['bin_lo'])}, {_edge(ref['bin_hi'])})")
            rows.append((model, prec, rng, str(ref["count"]),
                         _pct(by.get(("ce", prec, b), {}).get("frac_zero_k_term")), *cells))
    headers = [("Model", False), ("Precision", False), ("Top-2 gap Δ", False), ("N", True),
               ("CE ∂L/∂z_y = 0 %", True)]
    for loss in COMPARED:
        lab = LOSS_LABELS[loss]
        headers += [(f"{lab} zero %", True), (f"{lab} rel. err", True), (f"{lab} cos", True)]
    return Table(
        "diag-gap-bins", "Gradient error by top-2 logit gap",
        "Input gradient at each precision against the same computation in float64; untargeted "
        "attacks, points whose true class is top-1 (phase i), clean points and PGD iterates "
        "pooled. Δ from the float64 logits; bin edges include the rounding (−ln u) and "
        "underflow (−ln(s/2)) thresholds of docs/theory.md §3, which apply to the pure "
        "fp16/bf16 rows only (amp-fp16/amp-bf16: torch.autocast computes CE in fp32; its zeros "
        "come from the fp16/bf16 backward through the network). zero %: input gradient exactly "
        "0; rel. err and cos: medians of ‖g − g64‖/‖g64‖ and cosine similarity.",
        tuple(h for h, _ in headers), tuple(n for _, n in headers), tuple(rows),
        "No diagnostics results.")


def verdict_table(verdicts: dict[str, Path]) -> Table:
    """One row per agreement check with the numbers behind it."""
    rows = []
    for model in sorted(verdicts):
        doc = json.loads(verdicts[model].read_text())
        label = f"{model} ({doc['device']})" if "device" in doc else model  # where it ran
        for v in doc["verdicts"]:
            if v["check"] == "scaled_no_zero_gradient":
                where = "all Δ > 0"
                numbers = f"zero {_pct(v['zero_frac'])}% of {v['n']}"
            else:
                hi = v.get("threshold_underflow", v.get("threshold_sure"))
                where = f"Δ < {v['threshold_round']:.2f} | Δ > {hi:.2f}"
                numbers = (f"zero {_pct(v['zero_frac_below'])}% of {v['n_below']} | "
                           f"{_pct(v['zero_frac_above'])}% of {v['n_above']} "
                           f"(between: {_pct(v['zero_frac_between'])}% of {v['n_between']})")
            attack = LOSS_LABELS.get(v["loss"], v["loss"]) + (" targeted" if v["targeted"] else "")
            rows.append((label, v["check"], attack, v["precision"], where, numbers, v["verdict"]))
    return Table(
        "diag-verdicts", "Does the measured gradient error follow the theory?",
        "ce_zero_gradient: input gradient exactly 0 should be ~0% below the rounding threshold "
        "and ≥90% above the underflow threshold; ce_true_class_term: ∂L/∂z_y rounded to 0, "
        "~0% below −ln u and ≥90% above −ln u + ln(K−1); scaled_no_zero_gradient: MIFPE/T-MIFPE "
        "(scaled gap ≈ 1) should have ≤5% zero gradients. Phase (i) points, all point sets "
        "pooled; a side with fewer than 10 points gives “too few points”. The device measured "
        "on is given with the model: on CUDA the thresholds may differ "
        "(benchmarks/device_check.py). The CE checks are for the pure dtypes only: under "
        "autocast (amp-*) CE is computed in fp32 and the thresholds do not apply.",
        ("Model", "Check", "Attack", "Precision", "Where", "Numbers", "Verdict"),
        (False, False, False, False, False, False, False), tuple(rows), "No verdicts.")


def tstar_table(tstar: dict[str, Path]) -> Table:
    """t* quantiles per phase over all iterations of the fp32 T-MIFPE trace."""
    rows = []
    for model in sorted(tstar):
        f = pl.read_parquet(tstar[model]).filter(pl.col("iteration").is_null())
        frozen = {(r["targeted"], r["phase"]): r["count"]
                  for r in f.filter(~pl.col("used")).iter_rows(named=True)}
        for r in f.filter(pl.col("used")).sort(["targeted", "phase"]).iter_rows(named=True):
            rows.append((model, "targeted" if r["targeted"] else "untargeted",
                         PHASE_LABELS.get(r["phase"], str(r["phase"])), str(r["count"]),
                         str(frozen.get((r["targeted"], r["phase"]), 0)),
                         str(r["n_tie"] + r["n_nonfinite_logits"]),
                         *(_fmt(r[q]) for q in ("q000", "q005", "q025", "q050", "q075", "q095",
                                                "q100"))))
    return Table(
        "diag-tstar", "T-MIFPE t* during the attack",
        "fp32 T-MIFPE PGD; one value per example per iteration, recorded by wrapping the loss. "
        "Quantiles over the rows the attack steps with (true class still top-1). Frozen: rows "
        "the loss also saw whose gradient PGD discards (misclassified at that iterate: "
        "freeze-on-success); phase (iii) rows are stepped with while y is still top-1. "
        "Degenerate: Δ = 0 or non-finite logits (t* = 1 there).",
        ("Model", "Attack", "Phase", "Values", "Frozen", "Degenerate", "min", "5%", "25%",
         "median", "75%", "95%", "max"),
        (False, False, False, True, True, True, True, True, True, True, True, True, True),
        tuple(rows), "No t* trace.")


def tables(paths: Sequence[Path]) -> list[Table]:
    """Report tables from diagnostics outputs (files, or directories holding them)."""
    bins, tstar, verdict = _files(paths)
    return [gap_bin_table(bins), verdict_table(verdict), tstar_table(tstar)]
