"""The fast preset against AutoAttack, point by point, per model and split (tuning, held-out,
all), and its ``fast`` object in ``results/metrics.json``.

Costs are counted as in :mod:`tmifpe.aggregate.compare_aa`: the preset's ``passes`` column
(forward + backward + guard queries + verification forwards, see tmifpe.attacks.fast) against
AutoAttack's 2·n_grad + n_queries, both averaged over the same points. ``time_ratio`` is the
whole-model wall time of the fast stage over the AutoAttack stage's (both on all points of the
same ``dvc repro``). Target (issue 14): on held-out points ``gap_vs_aa_pts <= 0`` and
``pass_ratio <= 0.10``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from tmifpe.aggregate.compare_aa import AA_STAGES
from tmifpe.aggregate.inputs import DEFAULT_SUITE, with_suite
from tmifpe.aggregate.keys import MODEL_KEYS, robust, robust64
from tmifpe.aggregate.stats import count, paired_bootstrap_ci
from tmifpe.evaluation.cost import autoattack_passes

TARGET_GAP_PTS = 0.0
TARGET_PASS_RATIO = 0.10
SPLITS = ("held_out", "tuning", "all")
FAST_DIR = Path("results/fast")
FAST_KEYS = [*MODEL_KEYS, "split"]
FAST_COLUMNS: dict[str, pl.DataType] = {
    "dataset": pl.String(), "model": pl.String(), "preset": pl.String(),
    "example": pl.Int64(), "split": pl.String(), "clean_correct": pl.Boolean(),
    "robust_fp32": pl.Boolean(), "robust_fp64": pl.Boolean(), "passes": pl.Int64(),
    "guard_broken": pl.Boolean(), "flag_zero_grad": pl.Boolean(),
    "flag_nonfinite": pl.Boolean(), "randomized": pl.Boolean(),
}
_AA_ONLY = [f"n_aa_only_{s.replace('-', '_')}" for s in AA_STAGES]
TABLE_COLUMNS = [
    *FAST_KEYS, "preset", "n", "robust_acc", "robust_acc_fp64", "aa_robust_acc", "gap_vs_aa_pts",
    "gap_ci_low", "gap_ci_high", "passes_per_point", "aa_passes_per_point", "pass_ratio",
    "pass_ratio_ci_low", "pass_ratio_ci_high", "wall_time_s", "aa_wall_time_s",
    "time_ratio", "n_broken_fast_only", "n_broken_aa_only", *_AA_ONLY, "n_guard_broken",
    "n_flag_zero_grad", "n_flag_nonfinite", "randomized", "target_met",
]


def fast_files(models: Sequence[str], root: Path = FAST_DIR) -> list[Path]:
    """``results/fast/<model>.parquet`` of each model (its timing JSON sits beside it)."""
    return [root / f"{m}.parquet" for m in models]


def load_fast(paths: Sequence[Path], suite: str = DEFAULT_SUITE
              ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per-example rows, per-model wall time) of the listed fast files, with the aggregated
    ``suite`` name as first column; one-line errors."""
    frames, timing = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"listed result file not found: {path}")
        lazy = pl.scan_parquet(path)
        missing = [c for c in FAST_COLUMNS if c not in lazy.collect_schema()]
        if missing:
            raise ValueError(f"fast file {path} lacks columns: {', '.join(missing)}")
        frame = lazy.select(pl.col(c).cast(t, strict=True) for c, t in FAST_COLUMNS.items())
        frames.append(with_suite(frame.collect(), suite))
        tpath = path.with_name(path.name.removesuffix(".parquet") + ".timing.json")
        try:
            total = float(json.loads(tpath.read_text(encoding="utf-8"))["total"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"fast timing file {tpath} unreadable or without 'total' "
                             f"({err!r})") from err
        ident = frames[-1].select(MODEL_KEYS).unique()
        if ident.height != 1:
            raise ValueError(f"fast file {path} holds {ident.height} models (need 1)")
        timing.append({**ident.row(0, named=True), "wall_time_s": total})
    data = pl.concat([pl.DataFrame(schema={"suite": pl.String(), **FAST_COLUMNS}), *frames],
                     how="vertical")
    if data.select([*MODEL_KEYS, "example"]).is_duplicated().any():
        raise ValueError("duplicate fast rows (model, example) across the listed files")
    tschema = {"suite": pl.String, "dataset": pl.String, "model": pl.String,
               "wall_time_s": pl.Float64}
    return data, pl.DataFrame(timing, schema=tschema, orient="row")


def fast_table(fast: pl.DataFrame, fast_timing: pl.DataFrame, aa: pl.DataFrame,
               aa_timing: pl.DataFrame) -> pl.DataFrame:
    """Per model and split: the preset vs AutoAttack on the points both evaluated (fp32
    verdicts); columns ``TABLE_COLUMNS``. ``aa``: AutoAttack rows (``load_autoattack``);
    timings: MODEL_KEYS + ``wall_time_s``."""
    aa_side = aa.select(*MODEL_KEYS, "example", robust().alias("aa_r"), "broken_by",
                        autoattack_passes().alias("aa_passes"))
    joined = fast.with_columns(robust().alias("r"), robust64().alias("r64")).join(
        aa_side, on=[*MODEL_KEYS, "example"], how="inner")
    both = pl.concat([joined, joined.with_columns(pl.lit("all").alias("split"))])
    r, a = pl.col("r"), pl.col("aa_r")
    aa_only = [count(r & ~a & (pl.col("broken_by") == s), c) for s, c in zip(AA_STAGES, _AA_ONLY,
                                                                            strict=True)]
    times = fast_timing.join(aa_timing.rename({"wall_time_s": "aa_wall_time_s"}), on=MODEL_KEYS,
                             how="left")
    table = (
        both.group_by(FAST_KEYS)
        .agg(
            pl.col("preset").first(),
            pl.len().cast(pl.Int64).alias("n"),
            r.mean().alias("robust_acc"),
            pl.col("r64").mean().alias("robust_acc_fp64"),
            a.mean().alias("aa_robust_acc"),
            pl.col("passes").mean().alias("passes_per_point"),
            pl.col("aa_passes").mean().alias("aa_passes_per_point"),
            count(~r & a, "n_broken_fast_only"),
            count(r & ~a, "n_broken_aa_only"),
            *aa_only,
            count(pl.col("guard_broken"), "n_guard_broken"),
            count(pl.col("flag_zero_grad"), "n_flag_zero_grad"),
            count(pl.col("flag_nonfinite"), "n_flag_nonfinite"),
            pl.col("randomized").any(),
        )
        .join(times, on=MODEL_KEYS, how="left")
        .with_columns(
            ((pl.col("robust_acc") - pl.col("aa_robust_acc")) * 100.0).alias("gap_vs_aa_pts"),
            _ratio("passes_per_point", "aa_passes_per_point").alias("pass_ratio"),
            _ratio("wall_time_s", "aa_wall_time_s").alias("time_ratio"),
        )
        .with_columns(((pl.col("gap_vs_aa_pts") <= TARGET_GAP_PTS + 1e-9)
                       & (pl.col("pass_ratio") <= TARGET_PASS_RATIO)).alias("target_met"))
    )
    table = table.join(_bootstrap(both), on=FAST_KEYS, how="left")
    order = pl.col("split").replace_strict(list(SPLITS), list(range(len(SPLITS))))
    return (table.select(TABLE_COLUMNS).with_columns(order.alias("_o"))
            .sort([*MODEL_KEYS, "_o"]).drop("_o"))


def _gap_pts(fast_r: np.ndarray, aa_r: np.ndarray, axis: int) -> np.ndarray:
    return 100.0 * (fast_r.mean(axis) - aa_r.mean(axis))


def _pass_ratio(fast_p: np.ndarray, aa_p: np.ndarray, axis: int) -> np.ndarray:
    return fast_p.mean(axis) / aa_p.mean(axis)


def _bootstrap(points: pl.DataFrame) -> pl.DataFrame:
    """Per model and split: 95% paired percentile bootstrap intervals over points of the gap
    (points) and of the pass ratio (:func:`tmifpe.aggregate.stats.paired_bootstrap_ci`)."""
    rows = []
    for key, g in points.sort([*FAST_KEYS, "example"]).group_by(FAST_KEYS, maintain_order=True):
        r, a = g["r"].cast(pl.Float64).to_numpy(), g["aa_r"].cast(pl.Float64).to_numpy()
        fp, ap = g["passes"].cast(pl.Float64).to_numpy(), g["aa_passes"].cast(
            pl.Float64).to_numpy()
        gap = paired_bootstrap_ci(_gap_pts, (r, a))
        ratio = paired_bootstrap_ci(_pass_ratio, (fp, ap)) if ap.sum() > 0 else (None, None)
        rows.append((*key, *gap, *ratio))
    schema = {**{k: pl.String for k in FAST_KEYS}, "gap_ci_low": pl.Float64,
              "gap_ci_high": pl.Float64, "pass_ratio_ci_low": pl.Float64,
              "pass_ratio_ci_high": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def fast_metrics(table: pl.DataFrame, digits: int = 4) -> dict[tuple[str, str], dict]:
    """(suite, model) -> the ``fast`` object of metrics.json, from the held-out rows."""
    out: dict[tuple[str, str], dict] = {}
    if "split" not in table.columns:
        return out
    for row in table.filter(pl.col("split") == "held_out").iter_rows(named=True):
        def rnd(key: str, row: dict = row) -> float | None:
            v = row[key]
            return None if v is None else round(float(v), digits)

        out[(row["suite"], row["model"])] = {
            "split": "held_out", "n": row["n"], "preset": row["preset"],
            "robust_acc": rnd("robust_acc"), "aa_robust_acc": rnd("aa_robust_acc"),
            "gap_vs_aa_pts": rnd("gap_vs_aa_pts"), "gap_ci_low": rnd("gap_ci_low"),
            "gap_ci_high": rnd("gap_ci_high"), "pass_ratio": rnd("pass_ratio"),
            "pass_ratio_ci_low": rnd("pass_ratio_ci_low"),
            "pass_ratio_ci_high": rnd("pass_ratio_ci_high"),
            "time_ratio": rnd("time_ratio"), "passes_per_point": rnd("passes_per_point"),
            "aa_passes_per_point": rnd("aa_passes_per_point"),
            "n_broken_fast_only": row["n_broken_fast_only"],
            "n_broken_aa_only": row["n_broken_aa_only"],
            "n_guard_broken": row["n_guard_broken"], "n_flag_zero_grad": row["n_flag_zero_grad"],
            "n_flag_nonfinite": row["n_flag_nonfinite"], "randomized": row["randomized"],
            "target_met": row["target_met"],
        }
    return out


def _ratio(num: str, den: str) -> pl.Expr:
    return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den)).otherwise(None)


# ------------------------------------------------------------- validation models (issue 21)
VALIDATION_JSON = Path("benchmarks/results/fast_validation_v3.json")  # protocol v3 (docs/fast.md)
VALIDATION_FIELDS = (
    "role", "eps", "n", "robust_acc", "aa_robust_acc", "gap_vs_aa_pts", "gap_ci_low",
    "gap_ci_high", "pass_ratio", "pass_ratio_ci_low", "pass_ratio_ci_high", "fwd_eq_ratio",
    "time_ratio", "n_missed", "n_broken_fast_only", "n_escalated",
)


def load_validation(path: Path = VALIDATION_JSON) -> dict | None:
    """The committed result of benchmarks/fast_validation.py, or None when absent; ValueError
    (one line) when it lacks its ``models`` rows."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise ValueError(f"{path}: expected an object with a 'models' list "
                         "(benchmarks/fast_validation.py output)")
    return doc


def validation_metrics(doc: dict | None) -> dict[str, dict]:
    """model -> the ``fast`` object of a validation-set model (metrics.json
    ``fast_validation``): robust accuracy, gap vs AutoAttack (points) and pass ratio with their
    bootstrap CI bounds, forward-equivalent and time ratios, disagreement counts."""
    if doc is None:
        return {}
    return {r["model"]: {"preset": r["preset"], **{k: r[k] for k in VALIDATION_FIELDS}}
            for r in sorted(doc["models"], key=lambda r: r["model"])}


def with_validation(metrics: dict, doc: dict | None) -> dict:
    """``metrics`` plus ``fast_validation`` (:func:`validation_metrics`) when ``doc`` exists."""
    if doc is None:
        return metrics
    return {**metrics, "fast_validation": {"protocol_sha256": doc["protocol_sha256"],
                                           "models": validation_metrics(doc)}}
