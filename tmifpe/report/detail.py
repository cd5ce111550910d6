"""Long-form tables of the HTML report: one formatted row per run or model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from tmifpe.report.views import (
    DIGITS,
    HEADLINE_PRECISION,
    attack_name,
    attack_rank,
    common_budgets,
    model_label,
    models,
    precision_rank,
)

DASH = "–"


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    note: str
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]  # right-aligned columns
    rows: tuple[tuple[str, ...], ...]
    empty: str = "No rows."


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100.0 * x:.{DIGITS}f}"


def pp(x: float | None) -> str:
    return DASH if x is None else f"{x:+.{DIGITS}f}"


def num(x: float | None, digits: int = 1) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def ci(low: float | None, high: float | None, scale: float = 100.0) -> str:
    if low is None or high is None:
        return DASH
    return f"[{scale * low:.{DIGITS}f}, {scale * high:.{DIGITS}f}]"


def yes_no(x: bool | None) -> str:
    return DASH if x is None else ("yes" if x else "no")


def _rows(frame: pl.DataFrame, tables: dict, fmt: Callable[[dict, str], tuple[str, ...]]) -> tuple:
    """Rows in report order (model, attack, precision, budget), each formatted by ``fmt``."""
    order = {m: i for i, m in enumerate(models(tables))}
    all_models = list(order)

    def key(r: dict) -> tuple:
        attack = attack_rank((r["loss"], r["targeted"])) if "loss" in r else ()
        prec = precision_rank(r["precision"]) if "precision" in r else ()
        return (order[(r["suite"], r["dataset"], r["model"])], attack, prec, r.get("budget") or 0)

    rows = sorted(frame.iter_rows(named=True), key=key)
    return tuple(fmt(r, model_label((r["suite"], r["dataset"], r["model"]), all_models))
                 for r in rows)


def _table(key: str, title: str, note: str, headers: list[tuple[str, bool]], rows: tuple,
           empty: str = "No rows.") -> Table:
    return Table(key, title, note, tuple(h for h, _ in headers), tuple(n for _, n in headers),
                 rows, empty)


def vs_autoattack_table(tables: dict) -> Table:
    frame = tables["vs_autoattack"].filter(pl.col("precision") == HEADLINE_PRECISION)
    rows = _rows(frame, tables, lambda r, m: (
        m, attack_name(r["loss"], r["targeted"]), str(r["budget"]), str(r["n_common"]),
        pct(r["robust_acc"]), pct(r["aa_robust_acc"]), pp(r["gap_pp"]),
        str(r["n_broken_attack_only"]), str(r["n_broken_aa_only"]), str(r["n_clean_disagree"])))
    return _table(
        "vs-aa", "Against AutoAttack, point by point",
        f"At {HEADLINE_PRECISION}, on the points both evaluated. Gap = attack − AutoAttack "
        "robust accuracy in percentage points (negative: the attack is stronger).",
        [("Model", False), ("Attack", False), ("N", True), ("Points", True), ("Robust %", True),
         ("AA robust %", True), ("Gap (pp)", True), ("Broken only by attack", True),
         ("Broken only by AA", True), ("Clean verdicts differ", True)], rows,
        "No model has both attack cells and AutoAttack results.")


def cost_table(tables: dict) -> Table:
    aa = {(r["suite"], r["model"]): r for r in tables["autoattack"].iter_rows(named=True)}
    frame = tables["attack_cost"].filter(pl.col("precision") == HEADLINE_PRECISION)

    def fmt(r: dict, m: str) -> tuple[str, ...]:
        ref = aa.get((r["suite"], r["model"]), {})
        aa_cost, aa_wall = ref.get("cost_per_point"), ref.get("wall_time_per_point_s")
        wall = r["wall_time_per_point_s"]
        return (m, attack_name(r["loss"], r["targeted"]), str(r["budget"]),
                num(r["forward_per_point"]), num(r["backward_per_point"]),
                num(r["cost_per_point"]), num(None if wall is None else 1000 * wall, 2),
                num(aa_cost), num(_ratio(r["cost_per_point"], aa_cost), 3),
                num(_ratio(wall, aa_wall), 3))

    return _table(
        "cost", "Cost per point",
        f"Means over the evaluated points at {HEADLINE_PRECISION}. Attack cost = forward + "
        "backward passes; AutoAttack cost = 2 × gradient evaluations (each a forward and a "
        "backward pass) + forward-only queries. Wall time from the timing files.",
        [("Model", False), ("Attack", False), ("N", True), ("Forward", True), ("Backward", True),
         ("Passes", True), ("Wall ms", True), ("AA passes", True),
         ("Cost ratio", True), ("Wall ratio", True)], _rows(frame, tables, fmt))


def precision_table(tables: dict) -> Table:
    keys = ["suite", "dataset", "model"]
    common = common_budgets(tables["robust_accuracy"])
    largest = pl.DataFrame([(*k, b) for k, b in common.items()],
                           schema=[*keys, "budget"], orient="row")
    frame = (tables["precision_effect"].join(largest, on=[*keys, "budget"], how="semi")
             if common else tables["precision_effect"].clear())
    rows = _rows(frame, tables, lambda r, m: (
        m, attack_name(r["loss"], r["targeted"]), str(r["budget"]), r["precision"],
        pct(r["robust_acc"]), pp(r["delta_vs_fp64_pp"]), str(r["n_dtype_only_examples"]),
        str(r["dtype_only_hits"]), str(r["n_missed_examples"]), str(r["missed_hits"]),
        str(r["n_false_success"]), str(r["n_fp32_fp64_disagree"]),
        num(r["zero_grad_fraction"], 4), str(r["nonfinite_steps"])))
    return _table(
        "precision-detail", "Precision effects",
        "At the largest budget every precision ran. Δ vs fp64 = robust accuracy minus that of "
        "the fp64 attack (pp). Dtype-only hits, a measured precision effect of its own: "
        "iterates the attack's precision called misclassified but a fresh fp32 pass did not "
        "(examples with at least one, and iterates in all); the attack went on from them, so "
        "they are not in the robust accuracy. Missed hits, the mirror: iterates a fresh fp32 "
        "pass misclassified but the attack's precision did not (not kept: the attack decides "
        "in its own precision). False successes: confirmed successes the final "
        "fp32 check rejected (expected 0). Zero-grad fraction = zero-gradient steps / backward "
        "passes.",
        [("Model", False), ("Attack", False), ("N", True), ("Precision", False),
         ("Robust %", True), ("Δ vs fp64 (pp)", True), ("Dtype-only hit examples", True),
         ("Dtype-only hits", True), ("Missed hit examples", True), ("Missed hits", True),
         ("False successes", True),
         ("fp32 ≠ fp64", True), ("Zero-grad fraction", True), ("Non-finite steps", True)], rows)


def worst_case_table(tables: dict) -> Table:
    every = tables["worst_case_all_precisions"].with_columns(pl.lit("all").alias("precision"))
    frame = pl.concat([tables["worst_case"], every.select(tables["worst_case"].columns)])
    rows = _rows(frame, tables, lambda r, m: (
        m, r["precision"], str(r["budget"]), str(r["n_attacks"]), str(r["n"]),
        pct(r["robust_acc"]), ci(r["ci_low"], r["ci_high"]), pct(r["aa_robust_acc"]),
        pp(r["gap_pp"])))
    return _table(
        "worst-case", "Worst case over attacks",
        "An example counts as robust only if it survives every attack (loss, targeted and "
        "untargeted) run at that precision and budget; precision “all” also takes the worst "
        "case over precisions.",
        [("Model", False), ("Precision", False), ("N", True), ("Attacks", True),
         ("Points", True), ("Robust %", True), ("95% CI", True), ("AA robust %", True),
         ("Gap (pp)", True)], rows)


def nonfinite_table(tables: dict) -> Table:
    rows = _rows(tables["nonfinite"], tables, lambda r, m: (
        m, "AutoAttack" if r["loss"] == "autoattack" else attack_name(r["loss"], r["targeted"]),
        r["precision"], DASH if r["budget"] is None else str(r["budget"]),
        *(DASH if r[c] is None else str(r[c]) for c in (
            "n_nonfinite_fp32", "n_nonfinite_fp64", "n_examples_nonfinite_steps",
            "nonfinite_steps", "n_nan_margin_fp32",
            "n_inf_margin_fp32", "n_null_margin_fp32", "n_nan_margin_fp64", "n_inf_margin_fp64",
            "n_null_margin_fp64"))))
    return _table(
        "nonfinite", "NaN and Inf",
        "Runs where the verdict logits of a point were NaN/Inf (such a point is never counted "
        "as broken), a loss or gradient was NaN/Inf (step skipped) or a stored margin is NaN, "
        "±Inf or missing. Nothing is dropped from the accuracies above because of these.",
        [("Model", False), ("Attack", False), ("Precision", False), ("N", True),
         ("Non-finite verdict fp32", True), ("Non-finite verdict fp64", True),
         ("Examples with skipped steps", True), ("Skipped steps", True),
         ("NaN margin fp32", True), ("Inf margin fp32", True), ("Missing margin fp32", True),
         ("NaN margin fp64", True), ("Inf margin fp64", True), ("Missing margin fp64", True)],
        rows, "No NaN or Inf anywhere.")


def leaderboard_table(tables: dict) -> Table:
    rows = _rows(tables["leaderboard"], tables, lambda r, m: (
        m, r["robustbench_id"], str(r["n"]), num(r["reported_clean_acc"], DIGITS),
        num(r["measured_clean_acc"], DIGITS), pp(r["clean_diff_pp"]),
        num(r["reported_aa_acc"], DIGITS), num(r["measured_aa_acc"], DIGITS),
        ci(r["aa_ci_low"], r["aa_ci_high"], 1.0), pp(r["aa_diff_pp"]),
        yes_no(r["reported_aa_in_ci"])))
    return _table(
        "leaderboard", "Against the leaderboard",
        "Reported clean and AutoAttack accuracy (%) against ours on the evaluated points; the "
        "interval is the Wilson 95% interval of our AutoAttack accuracy.",
        [("Model", False), ("Leaderboard id", False), ("Points", True), ("Clean reported", True),
         ("Clean ours", True), ("Δ (pp)", True), ("AA reported", True), ("AA ours", True),
         ("95% CI", True), ("Δ (pp)", True), ("Reported in CI", False)], rows,
        "No model of this grid is on the leaderboard.")


def autoattack_table(tables: dict) -> Table:
    rows = _rows(tables["autoattack"], tables, lambda r, m: (
        m, str(r["n"]), pct(r["clean_acc"]), pct(r["robust_acc"]), ci(r["ci_low"], r["ci_high"]),
        str(r["n_broken_apgd_ce"]), str(r["n_broken_apgd_t"]), str(r["n_broken_fab_t"]),
        str(r["n_broken_square"]), num(r["grad_per_point"]), num(r["queries_per_point"]),
        num(r["wall_time_per_point_s"], 4)))
    return _table(
        "autoattack", "AutoAttack",
        "Standard AutoAttack at fp32; points broken by each stage of the cascade.",
        [("Model", False), ("Points", True), ("Clean %", True), ("Robust %", True),
         ("95% CI", True), ("APGD-CE", True), ("APGD-T", True), ("FAB-T", True),
         ("Square", True), ("Grad/pt", True), ("Queries/pt", True), ("Wall s/pt", True)], rows,
        "No AutoAttack results.")


def runs_table(tables: dict) -> Table:
    rows = _rows(tables["robust_accuracy"], tables, lambda r, m: (
        m, attack_name(r["loss"], r["targeted"]), r["precision"], str(r["budget"]), str(r["n"]),
        pct(r["robust_acc"]), ci(r["ci_low"], r["ci_high"]), pct(r["robust_acc_fp64"])))
    return _table(
        "runs", "All runs",
        "Robust accuracy of every run with its Wilson 95% interval; the last column re-verifies "
        "the final points at fp64.",
        [("Model", False), ("Attack", False), ("Precision", False), ("N", True),
         ("Points", True), ("Robust %", True), ("95% CI", True), ("Robust % (fp64 check)", True)],
        rows)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def all_tables(tables: dict) -> list[Table]:
    return [vs_autoattack_table(tables), cost_table(tables), precision_table(tables),
            worst_case_table(tables), nonfinite_table(tables), leaderboard_table(tables),
            autoattack_table(tables), runs_table(tables)]
