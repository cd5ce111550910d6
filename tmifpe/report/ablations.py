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


def _groups(frame: pl.DataFrame) -> list[tuple[tuple, dict[str, dict]]]:
    """[(lead cells, {variant name: row})] in report order (names:
    :attr:`tmifpe.pipeline.ablations.Variant.name`)."""
    prec_rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    out: dict[tuple, dict[str, dict]] = {}
    for r in frame.iter_rows(named=True):
        key = tuple(r[k] for k in _KEY)
        out.setdefault(key, {})[r["variant"]] = r
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
    rows = [(*lead, *(_pct(v.get(f"pgd/tmifpe/{rule}/{m}", {}).get("robust_acc"))
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
    rows = [(*lead, *(_pct(v.get(f"pgd/tmifpe/{r}/auto", {}).get("robust_acc"))
                      for r in rules)) for lead, v in _groups(frame)]
    note = ("Robust accuracy (%) of PGD with T-MIFPE under each phase (ii)/(iii) rule: "
            "“mifpe” t = 1, “coef” argmax (t/Δ)·p_k, “cap” t = −ln u(dtype)/a_k (docs/theory.md "
            "§6). The rule only acts in phase (iii) here (phase (ii) examples are frozen), so "
            "untargeted rows coincide by construction.")
    return _table("ablation_rule", "Ablation: T-MIFPE phase (ii)/(iii) rule", note, rules, rows)


def _acc_and_passes(frame: pl.DataFrame, cols: Sequence[str]) -> list[tuple[str, ...]]:
    """Per group: robust accuracy of each variant in ``cols``, then its forward passes/point."""
    rows = []
    for lead, v in _groups(frame):
        acc = [_pct(v.get(c, {}).get("robust_acc")) for c in cols]
        fwd = [_num(v.get(c, {}).get("mean_forward")) for c in cols]
        rows.append((*lead, *acc, *fwd))
    return rows


def engine_table(frame: pl.DataFrame) -> Table:
    """(c) CE and T-MIFPE inside PGD and APGD (APGD's default progress measure per loss)."""
    rule = _phase_rule(frame) if frame.height else "coef"
    cols = ("pgd/ce", "apgd/ce/loss", f"pgd/tmifpe/{rule}/auto",
            f"apgd/tmifpe/{rule}/auto/margin")
    names = ("PGD CE", "APGD CE", "PGD T-MIFPE", "APGD T-MIFPE")
    note = ("Robust accuracy (%) and mean forward passes per attacked point. PGD: the suite's "
            "schedule and momentum, start on the eps-ball surface. APGD (Croce & Hein 2020): "
            "step 2·eps halved at checkpoints when progress stalls, uniform start; CE judged by "
            "its loss, T-MIFPE by the C&W margin (its t*/Δ scale changes every iterate, so its "
            "values are not comparable between iterates); the next table crosses the two. Same "
            "budget = same iterations.")
    return _table("ablation_engine", "Ablation: PGD vs APGD", note,
                  (*names, *(f"fwd/pt {n}" for n in names)), _acc_and_passes(frame, cols))


def progress_table(frame: pl.DataFrame) -> Table:
    """(d) loss × progress measure in APGD: CE and T-MIFPE, each judged by loss and by margin."""
    rule = _phase_rule(frame) if frame.height else "coef"
    cols = ("apgd/ce/loss", "apgd/ce/margin", f"apgd/tmifpe/{rule}/auto/loss",
            f"apgd/tmifpe/{rule}/auto/margin")
    names = ("CE · loss", "CE · margin", "T-MIFPE · loss", "T-MIFPE · margin")
    note = ("Robust accuracy (%) and mean forward passes per attacked point of APGD with each "
            "loss under each progress measure (what decides step-size halving and the best "
            "point): “loss” the attack loss itself, “margin” the C&W margin of the same forward "
            "pass. Reading a column pair at fixed loss isolates the step-size control; a pair at "
            "fixed progress measure isolates the loss. T-MIFPE's value is not comparable between "
            "iterates (t*/Δ changes every step), so “T-MIFPE · loss” is the configuration APGD "
            "would run by default and the one this project argues against.")
    return _table("ablation_progress", "Ablation: APGD loss × progress measure", note,
                  (*names, *(f"fwd/pt {n}" for n in names)), _acc_and_passes(frame, cols))


def _temperatures(frame: pl.DataFrame) -> list[float]:
    if not frame.height or "mifpe_t" not in frame.columns:
        return []
    return sorted(t for t in frame["mifpe_t"].unique().to_list() if t is not None)


def mifpe_table(frame: pl.DataFrame) -> Table:
    """(e) MIFPE at each temperature T beside CE and T-MIFPE, PGD."""
    rule = _phase_rule(frame) if frame.height else "coef"
    temps = _temperatures(frame)
    cols = ("pgd/ce", *(f"pgd/mifpe/T{t:g}" for t in temps), f"pgd/tmifpe/{rule}/auto")
    names = ("CE", *(f"MIFPE T={t:g}" for t in temps), "T-MIFPE")
    note = ("Robust accuracy (%) and mean forward passes per attacked point of PGD (the suite's "
            "settings) with CE, MIFPE (CE of the logits scaled by T/Δ, Δ the top-2 gap; the "
            "paper's T = 1 and its released code's default T = 10) and T-MIFPE (t* per example "
            "and iteration).")
    return _table("ablation_mifpe", "Ablation: MIFPE temperature", note,
                  (*names, *(f"fwd/pt {n}" for n in names)), _acc_and_passes(frame, cols))


def tables(paths: Sequence[Path]) -> list[Table]:
    """The ablation tables (phase detection, rule, engine, APGD loss × progress, MIFPE
    temperature) of the Parquet files ``paths``."""
    frame = load(paths)
    return [phase_table(frame), rule_table(frame), engine_table(frame), progress_table(frame),
            mifpe_table(frame)]
