"""Report tables of the ablations (``results/ablations/<model>.parquet``; see
:mod:`tmifpe.pipeline.ablations`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tmifpe.report.detail import Table

DASH = "–"
PRECISION_ORDER = ("fp16", "bf16", "fp32", "fp64", "amp-fp16", "amp-bf16")
_KEY = ("model", "precision", "targeted", "budget")
_LEAD = (("Model", False), ("Attack", False), ("Precision", False), ("Budget", True))


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100.0 * x:.2f}"


def _num(x: float | None) -> str:
    return DASH if x is None else f"{x:.1f}"


def load(paths: Sequence[Path]) -> pl.DataFrame:
    """All ablation rows of ``paths`` in one frame (empty frame when there are none)."""
    frames = [pl.read_parquet(p) for p in paths]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _groups(frame: pl.DataFrame) -> list[tuple[tuple, dict[tuple, dict]]]:
    """[(lead cells, {(engine, loss, rule, phase_mode): row})] in report order."""
    prec_rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    out: dict[tuple, dict[tuple, dict]] = {}
    for r in frame.iter_rows(named=True):
        key = tuple(r[k] for k in _KEY)
        out.setdefault(key, {})[(r["engine"], r["loss"], r["rule"], r["phase_mode"])] = r
    order = sorted(out, key=lambda k: (k[0], prec_rank.get(k[1], 99), k[2], k[3]))
    result = []
    for key in order:
        any_row = next(iter(out[key].values()))
        attack = f"targeted ({any_row['n_targets']})" if key[2] else "untargeted"
        result.append(((key[0], attack, key[1], str(key[3])), out[key]))
    return result


def _table(key: str, title: str, note: str, columns: Sequence[str],
           rows: list[tuple[str, ...]]) -> Table:
    headers = [*_LEAD, *((c, True) for c in columns)]
    return Table(key, title, note, tuple(h for h, _ in headers), tuple(n for _, n in headers),
                 tuple(rows), empty="No ablation results.")


def _phase_rule(frame: pl.DataFrame) -> str:
    forced = frame.filter(pl.col("phase_mode").is_in(["unsuccessful", "successful"]))
    rules = sorted(set(forced["rule"].to_list())) if forced.height else []
    return rules[0] if len(rules) == 1 else "coef"


def phase_table(frame: pl.DataFrame) -> Table:
    """(a) T-MIFPE with the real phase vs t* forced to one phase, PGD."""
    rule = _phase_rule(frame) if frame.height else "coef"
    modes = ("auto", "unsuccessful", "successful")
    rows = [(*lead, *(_pct(v.get(("pgd", "tmifpe", rule, m), {}).get("robust_acc"))
                      for m in modes)) for lead, v in _groups(frame)]
    note = ("Robust accuracy (%) of PGD with T-MIFPE (phase (ii)/(iii) rule "
            f"“{rule}”), lower is stronger. “Forced” computes t* as if every example were still "
            "unsuccessful (phase (i) untargeted, (iii) targeted) or already successful ((ii), "
            "(iv)). With freeze-on-success only unsuccessful examples take gradient steps, so "
            "“forced unsuccessful” equals the real phase by construction (a check); “forced "
            "successful” gives every attacked example the wrong phase's t*. Verified by a fresh "
            "fp32 pass.")
    return _table("ablation_phase", "Ablation: T-MIFPE phase detection", note,
                  ("real phase", "forced unsuccessful", "forced successful"), rows)


def rule_table(frame: pl.DataFrame) -> Table:
    """(b) the phase (ii)/(iii) rule of t*, PGD, real phases."""
    rules = ("mifpe", "coef", "cap")
    rows = [(*lead, *(_pct(v.get(("pgd", "tmifpe", r, "auto"), {}).get("robust_acc"))
                      for r in rules)) for lead, v in _groups(frame)]
    note = ("Robust accuracy (%) of PGD with T-MIFPE under each phase (ii)/(iii) rule: "
            "“mifpe” t = 1, “coef” argmax (t/Δ)·p_k, “cap” t = −ln u(dtype)/a_k (docs/theory.md "
            "§6). The rule only acts in phase (iii) here (phase (ii) examples are frozen), so "
            "untargeted rows coincide by construction.")
    return _table("ablation_rule", "Ablation: T-MIFPE phase (ii)/(iii) rule", note, rules, rows)


def engine_table(frame: pl.DataFrame) -> Table:
    """(c) CE and T-MIFPE inside PGD and APGD: robust accuracy and forward passes per point."""
    rule = _phase_rule(frame) if frame.height else "coef"
    cols = (("pgd", "ce", "-", "-"), ("apgd", "ce", "-", "-"), ("pgd", "tmifpe", rule, "auto"),
            ("apgd", "tmifpe", rule, "auto"))
    rows = []
    for lead, v in _groups(frame):
        acc = [_pct(v.get(c, {}).get("robust_acc")) for c in cols]
        fwd = [_num(v.get(c, {}).get("mean_forward")) for c in cols]
        rows.append((*lead, *acc, *fwd))
    names = ("PGD CE", "APGD CE", "PGD T-MIFPE", "APGD T-MIFPE")
    note = ("Robust accuracy (%) and mean forward passes per attacked point. PGD: the suite's "
            "schedule and momentum, start on the eps-ball surface. APGD (Croce & Hein 2020): "
            "step 2·eps halved at checkpoints when progress stalls, uniform start; CE judged by "
            "its loss, T-MIFPE by the C&W margin (its t*/Δ scale changes every iterate, so its "
            "values are not comparable between iterates). Same budget = same iterations.")
    return _table("ablation_engine", "Ablation: PGD vs APGD", note,
                  (*names, *(f"fwd/pt {n}" for n in names)), rows)


def tables(paths: Sequence[Path]) -> list[Table]:
    """The ablation tables (phase detection, rule, engine) of the Parquet files ``paths``."""
    frame = load(paths)
    return [phase_table(frame), rule_table(frame), engine_table(frame)]
