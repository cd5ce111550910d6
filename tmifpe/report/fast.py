"""The report section of the fast preset (``tables["fast"]``, tmifpe.aggregate.fast): beside
AutoAttack, robust accuracy, passes, seconds, the points each breaks that the other does not,
the masking guard, and per model whether the target is met on held-out points (and if not, by
how much and which AutoAttack stage broke the points the preset missed); and the per-model table
over the validation set of models (the committed benchmarks/results/fast_validation_v3.json:
models the preset was not chosen on, bootstrap CIs, disagreements)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from tmifpe.aggregate.compare_aa import AA_STAGES
from tmifpe.aggregate.fast import (
    TARGET_GAP_PTS,
    TARGET_PASS_RATIO,
    VALIDATION_JSON,
    load_validation,
)
from tmifpe.report.detail import DASH, num, pct, pp
from tmifpe.report.views import Block, Cell, Grid, Row

HEADERS = (
    ("Model", False), ("Split", False), ("Points", True), ("Fast %", True), ("AA %", True),
    ("Gap (pts)", True), ("Gap 95% CI", True), ("Passes/pt", True), ("AA passes/pt", True),
    ("Pass ratio", True), ("Pass ratio 95% CI", True), ("Fast s", True), ("AA s", True),
    ("Time ratio", True), ("Fast only", True),
    ("AA only", True), ("Guard broke", True), ("Zero-grad", True), ("Non-finite", True),
)


@dataclass(frozen=True)
class FastSection:
    key: str
    title: str
    note: str
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]
    rows: tuple[tuple[str, ...], ...]
    verdicts: tuple[str, ...]  # one sentence per model: target, guard, flags
    validation: ValidationTable | None = field(default=None)


VALIDATION_HEADERS = (
    ("Model", False), ("Role", False), ("eps", True), ("Points", True), ("Fast %", True),
    ("AA %", True), ("Gap (pts)", True), ("Gap 95% CI", True), ("Pass ratio", True),
    ("Pass ratio 95% CI", True), ("Fwd-eq ratio", True), ("Time ratio", True),
    ("Missed (AA stage)", False), ("Fast only", True), ("Escalated", True),
)


@dataclass(frozen=True)
class ValidationTable:
    note: str
    headers: tuple[str, ...]
    numeric: tuple[bool, ...]
    rows: tuple[tuple[str, ...], ...]
    verdict: str


def validation_table(doc: dict | None) -> ValidationTable | None:
    """The per-model table of benchmarks/fast_validation.py's committed result (None if none)."""
    if doc is None:
        return None

    def missed(r: dict) -> str:
        if not r["missed"]:
            return "0"
        return ", ".join(f"#{m['example']} ({m['aa_broken_by']})" for m in r["missed"])

    rows = tuple((
        r["model"], r["role"], f"{r['eps']:g}", str(r["n"]), pct(r["robust_acc"]),
        pct(r["aa_robust_acc"]), pp(r["gap_vs_aa_pts"]),
        f"[{r['gap_ci_low']:+.2f}, {r['gap_ci_high']:+.2f}]", _ratio(r["pass_ratio"]),
        f"[{r['pass_ratio_ci_low']:.4f}, {r['pass_ratio_ci_high']:.4f}]",
        _ratio(r["fwd_eq_ratio"]), _ratio(r["time_ratio"]), missed(r),
        str(r["n_broken_fast_only"]), str(r["n_escalated"]),
    ) for r in sorted(doc["models"], key=lambda r: (r["role"] != "validation", r["model"])))
    v = doc["verdict"]
    verdict = (f"Preset {doc['preset']} (selected on the tuning models by the committed protocol "
               f"{doc['protocol']}, sha256 {doc['protocol_sha256'][:12]}): gap <= 0 on every "
               f"validation model: {'yes' if v['gap_le_0_on_every_validation_model'] else 'NO'}"
               f" ({v['validation_models']} models; worst gap {v['worst_validation_gap_pts']:+.2f}"
               f" pts, worst pass ratio {v['worst_validation_pass_ratio']:.4f}).")
    note = ("Validation set of models (benchmarks/fast_validation.py): each row one model, the "
            "preset against standard AutoAttack on the same points, fp32 verdicts. Gap and pass "
            "ratio with 95% paired bootstrap intervals over points. Pass ratio: forward + "
            "backward passes; fwd-eq ratio: a backward weighted as two forwards. Time ratio: "
            "seconds of the attack call alone, same machine. Missed: points AutoAttack breaks "
            "and the preset does not, with the AutoAttack attack that broke each.")
    return ValidationTable(note, tuple(h for h, _ in VALIDATION_HEADERS),
                           tuple(n for _, n in VALIDATION_HEADERS), rows, verdict)


def _interval(low: float | None, high: float | None, spec: str) -> str:
    return DASH if low is None or high is None else f"[{low:{spec}}, {high:{spec}}]"


def _ratio(x: float | None) -> str:
    return DASH if x is None else f"{x:.4f}"


def _verdict(r: dict) -> str:
    gap, ratio = r["gap_vs_aa_pts"], r["pass_ratio"]
    head = f"{r['model']} ({r['preset']}), held-out points (n = {r['n']}): "
    if r["target_met"]:
        head += (f"target met: gap {gap:+.2f} pts (<= {TARGET_GAP_PTS:g}), pass ratio "
                 f"{ratio:.4f} (<= {TARGET_PASS_RATIO:g}). ")
    else:
        misses = []
        if gap is None or gap > TARGET_GAP_PTS + 1e-9:
            stages = ", ".join(f"{s}: {r['n_aa_only_' + s.replace('-', '_')]}"
                               for s in AA_STAGES if r["n_aa_only_" + s.replace("-", "_")])
            misses.append(f"gap {DASH if gap is None else f'{gap:+.2f}'} pts, "
                          f"{DASH if gap is None else f'{gap - TARGET_GAP_PTS:.2f}'} pts above the "
                          f"target: AutoAttack breaks {r['n_broken_aa_only']} point(s) the preset "
                          f"does not (first broken by {stages or DASH}), the preset "
                          f"{r['n_broken_fast_only']} that AutoAttack does not")
        if ratio is None or ratio > TARGET_PASS_RATIO:
            misses.append(f"pass ratio {_ratio(ratio)}, "
                          f"{DASH if ratio is None else f'{ratio - TARGET_PASS_RATIO:.4f}'} above "
                          f"the target {TARGET_PASS_RATIO:g}")
        head += "target NOT met: " + "; ".join(misses) + ". "
    guard = (f"Masking guard: Square broke {r['n_guard_broken']} point(s) that every gradient "
             f"phase left robust; {r['n_flag_zero_grad']} point(s) had a zero input gradient, "
             f"{r['n_flag_nonfinite']} a non-finite loss or gradient")
    guard += "; the model is randomized (two clean passes differ)." if r["randomized"] else "."
    return head + guard


def fast_section(tables: dict[str, pl.DataFrame],
                 validation_path: Path | None = VALIDATION_JSON) -> FastSection | None:
    """The section, or None when there are neither fast results nor a validation result
    (``validation_path``, read when it exists; None: not read)."""
    validation = validation_table(None if validation_path is None
                                  else load_validation(validation_path))
    frame = tables.get("fast")
    if frame is None or frame.height == 0:
        if validation is None:
            return None
        frame = pl.DataFrame(schema={"suite": pl.String, "model": pl.String,
                                     "split": pl.String})
    order = {"held_out": 0, "tuning": 1, "all": 2}
    rows_in = sorted(frame.iter_rows(named=True),
                     key=lambda r: (r["suite"], r["model"], order.get(r["split"], 9)))
    rows = tuple((
        r["model"], r["split"].replace("_", "-"), str(r["n"]), pct(r["robust_acc"]),
        pct(r["aa_robust_acc"]), pp(r["gap_vs_aa_pts"]),
        _interval(r.get("gap_ci_low"), r.get("gap_ci_high"), "+.2f"), num(r["passes_per_point"]),
        num(r["aa_passes_per_point"]), _ratio(r["pass_ratio"]),
        _interval(r.get("pass_ratio_ci_low"), r.get("pass_ratio_ci_high"), ".4f"),
        num(r["wall_time_s"]),
        num(r["aa_wall_time_s"]), _ratio(r["time_ratio"]), str(r["n_broken_fast_only"]),
        str(r["n_broken_aa_only"]), str(r["n_guard_broken"]), str(r["n_flag_zero_grad"]),
        str(r["n_flag_nonfinite"]),
    ) for r in rows_in)
    verdicts = tuple(_verdict(r) for r in rows_in if r["split"] == "held_out")
    note = ("The fast preset (docs/fast.md) beside standard AutoAttack on the same points, fp32 "
            "verdicts (re-verified: eps-ball, [0,1], fresh fp32 pass). Passes: forward + "
            "backward, AutoAttack 2·n_grad + n_queries, the preset its gradient passes + Square "
            "queries + verification forwards. Seconds: whole-model wall time of each stage "
            "(all points). The preset was chosen on the tuning split; the target "
            f"(gap <= {TARGET_GAP_PTS:g} pts and pass ratio <= {TARGET_PASS_RATIO:g}) is judged "
            "on held-out points, with 95% paired percentile bootstrap intervals over points "
            "(2000 resamples, seeded). “Fast only”/“AA only”: points broken by one and not the "
            "other.")
    return FastSection("fast", "Fast preset vs AutoAttack", note, tuple(h for h, _ in HEADERS),
                       tuple(n for _, n in HEADERS), rows, verdicts, validation)


def fast_grid(tables: dict[str, pl.DataFrame]) -> Grid | None:
    """The held-out comparison as a grid (one column per model) for the LaTeX tables: robust
    accuracy of the preset and of AutoAttack (%), gap (points), passes and wall time as % of
    AutoAttack's."""
    frame = tables.get("fast")
    if frame is None or frame.height == 0:
        return None
    held = frame.filter(pl.col("split") == "held_out").sort("suite", "model")
    rows_in = list(held.iter_rows(named=True))

    def row(label: str, key: str, scale: float) -> Row:
        return Row(label, tuple(Cell(None if r[key] is None else scale * r[key])
                                for r in rows_in))

    rows = (row("Fast preset robust acc. (%)", "robust_acc", 100.0),
            row("AutoAttack robust acc. (%)", "aa_robust_acc", 100.0),
            row("Gap (points)", "gap_vs_aa_pts", 1.0),
            row("Passes (% of AutoAttack)", "pass_ratio", 100.0),
            row("Wall time (% of AutoAttack)", "time_ratio", 100.0))
    caption = ("Fast preset vs standard AutoAttack on the held-out points (fp32 verdicts). "
               f"Target: gap <= {TARGET_GAP_PTS:g} points and passes <= "
               f"{100 * TARGET_PASS_RATIO:g}% of AutoAttack's.")
    return Grid("fast", "Fast preset vs AutoAttack", caption, "Held-out points",
                tuple(r["model"] for r in rows_in), (), (Block(None, rows),))
