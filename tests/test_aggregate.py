"""Aggregation of hand-made result files with answers computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
from support.synthetic_results import (
    aa_frame,
    cell_frame,
    write_autoattack,
    write_cell,
    write_timing,
)

from tmifpe.aggregate import TABLE_KEYS, aggregate, metrics_json, write_aggregates

MODEL = "net"
# Per example: (clean_correct, robust_fp32, first_success_iter).
CE_FP32 = [(True, True, -1), (True, False, 3), (False, False, -1), (True, False, 7)]
CE_FP16 = [(True, True, -1), (True, True, -1), (False, False, -1), (True, False, 2)]
TMIFPE_FP32 = [(True, True, -1), (True, False, 1), (False, False, -1), (True, True, -1)]
TMIFPE_TARGETED_FP32 = [(True, False, 5), (True, False, 0), (False, False, -1), (True, True, -1)]
# AutoAttack: robust 0 and 1 (so CE breaks 1 that AA does not, AA breaks 3 that CE does not).
AA_ROBUST = [True, True, False, False]


def run_rows(verdicts, *, precision, targeted=False, **extra):
    rows = []
    for i, (clean, robust, fsi) in enumerate(verdicts):
        rows.append({
            "example": i, "label": i, "precision": precision, "targeted": targeted,
            "clean_correct": clean, "robust_fp32": robust, "first_success_iter": fsi,
            "attack_success": fsi >= 0, "n_forward": 11 if clean else 1,
            "n_backward": 10 if clean else 0, **extra,
        })
    return rows


def write_grid(root: Path) -> dict[str, list[Path]]:
    """ce at budget 10 (fp16, fp32, fp64) and 100 (fp32); tmifpe at budget 10 (fp32, both)."""
    ce10 = cell_frame(
        run_rows(CE_FP32, precision="fp32")
        + run_rows(CE_FP16, precision="fp16", zero_grad_steps=2)
        + run_rows(CE_FP32, precision="fp64"),
        model=MODEL, loss="ce", budget=10,
    )
    # precision-induced false success on example 1 at fp16; a skipped NaN step on example 3;
    # dtype-only hits: 3 iterates of example 0 and 1 of example 1 at fp16.
    ce10 = ce10.with_columns(
        pl.when((pl.col("precision") == "fp16") & (pl.col("example") == 1))
        .then(True).otherwise(pl.col("false_success")).alias("false_success"),
        pl.when(pl.col("precision") == "fp16").then(
            pl.col("example").replace_strict({0: 3, 1: 1}, default=0, return_dtype=pl.Int64))
        .otherwise(pl.col("dtype_only_hits")).alias("dtype_only_hits"),
        pl.when((pl.col("precision") == "fp16") & (pl.col("example") == 3))
        .then(4).otherwise(pl.col("nonfinite_steps")).alias("nonfinite_steps"),
    )
    ce100 = cell_frame(run_rows(CE_FP32, precision="fp32"), model=MODEL, loss="ce", budget=100)
    tm10 = cell_frame(
        run_rows(TMIFPE_FP32, precision="fp32")
        + run_rows(TMIFPE_TARGETED_FP32, precision="fp32", targeted=True, n_targets=1),
        model=MODEL, loss="tmifpe", budget=10,
    )
    cells = [write_cell(f, root) for f in (ce10, ce100, tm10)]
    aa = aa_frame(
        [{"example": i, "clean_correct": i != 2, "robust_fp32": r, "n_grad": 100 * (i + 1),
          "n_queries": 1000 if r else 0, "broken_by": "" if r or i == 2 else "apgd-t"}
         for i, r in enumerate(AA_ROBUST)],
        model=MODEL,
    )
    aa_file = write_autoattack(aa, root)
    timing = [
        write_timing(cells[0], [{"precision": p, "targeted": False, "n_examples": 4,
                                 "n_attacked": 3, "wall_time_s": w}
                                for p, w in (("fp16", 0.2), ("fp32", 0.4), ("fp64", 0.8))]),
        write_timing(aa_file, {"apgd-ce": 1.0, "apgd-t": 2.0, "total": 8.0}),
    ]
    return {"cells": cells, "aa": [aa_file], "timing": timing}


@pytest.fixture
def grid(tmp_path):
    return write_grid(tmp_path)


@pytest.fixture
def tables(grid):
    return aggregate(grid["cells"], grid["aa"], grid["timing"])


def one(frame: pl.DataFrame, **where) -> dict:
    rows = frame.filter(*(pl.col(k) == v for k, v in where.items()))
    assert rows.height == 1, (where, rows)
    return rows.row(0, named=True)


def test_every_table_is_returned_sorted_by_its_keys(tables):
    assert set(tables) == set(TABLE_KEYS)
    for name, keys in TABLE_KEYS.items():
        assert tables[name].equals(tables[name].sort(keys, nulls_last=True)), name


def test_robust_accuracy_and_wilson_interval_by_hand(tables):
    ra = tables["robust_accuracy"]
    ce = one(ra, loss="ce", targeted=False, precision="fp32", budget=10)
    assert (ce["n"], ce["n_clean_correct"], ce["n_robust"]) == (4, 3, 1)
    assert ce["robust_acc"] == 0.25
    # Wilson 95% for 1/4: centre (0.25 + z²/8)/(1 + z²/4), half-width as in stats.proportion.
    assert ce["ci_low"] == pytest.approx(0.045587, abs=1e-6)
    assert ce["ci_high"] == pytest.approx(0.699358, abs=1e-6)
    fp16 = one(ra, loss="ce", precision="fp16", budget=10)
    assert fp16["robust_acc"] == 0.5  # 2/4, Wilson [0.150039, 0.849961]
    assert (fp16["ci_low"], fp16["ci_high"]) == pytest.approx((0.150039, 0.849961), abs=1e-6)
    tm = one(ra, loss="tmifpe", targeted=False)
    assert tm["robust_acc"] == 0.5


def test_wilson_interval_at_zero_successes(tmp_path):
    frame = cell_frame(run_rows([(True, False, 0)] * 5, precision="fp32"), model=MODEL,
                       loss="ce", budget=10)
    tables = aggregate([write_cell(frame, tmp_path)], [], [])
    row = one(tables["robust_accuracy"])
    assert row["robust_acc"] == 0.0
    assert row["ci_low"] == 0.0
    assert row["ci_high"] == pytest.approx(0.434482, abs=1e-6)  # z²/n / (1 + z²/n) for n = 5


def test_clean_incorrect_is_never_robust(tmp_path):
    # An inconsistent row (robust but clean-incorrect) must still count as non-robust.
    frame = cell_frame(run_rows([(False, True, -1), (True, True, -1)], precision="fp32"),
                       model=MODEL, loss="ce", budget=10)
    tables = aggregate([write_cell(frame, tmp_path)], [], [])
    assert one(tables["robust_accuracy"])["n_robust"] == 1
    assert one(tables["clean_accuracy"])["clean_acc"] == 0.5


def test_clean_accuracy_per_model(tables):
    row = one(tables["clean_accuracy"], model=MODEL)
    assert (row["n"], row["n_clean_correct"], row["clean_acc"]) == (4, 3, 0.75)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.300642, 0.954413), abs=1e-6)


def test_worst_case_needs_every_attack(tables):
    # fp32 budget 10: ce robust {0}, tmifpe {0, 3}, tmifpe targeted {3} -> nobody survives all.
    wc = one(tables["worst_case"], precision="fp32", budget=10)
    assert wc["n_attacks"] == 3
    assert wc["attacks"] == "ce_untargeted,tmifpe_targeted,tmifpe_untargeted"
    assert (wc["n"], wc["n_robust"], wc["robust_acc"]) == (4, 0, 0.0)
    assert wc["aa_robust_acc"] == 0.5 and wc["gap_pp"] == pytest.approx(-50.0)
    # fp16 budget 10 has only ce: robust {0, 1}.
    assert one(tables["worst_case"], precision="fp16", budget=10)["robust_acc"] == 0.5
    # Over all precisions at budget 10: ce fp16 ∧ ce fp32 ∧ ce fp64 ∧ tmifpe -> none.
    every = one(tables["worst_case_all_precisions"], budget=10)
    assert every["robust_acc"] == 0.0 and every["n_attacks"] == 3
    # budget 100 has only ce fp32: robust {0}.
    assert one(tables["worst_case_all_precisions"], budget=100)["robust_acc"] == 0.25


def test_runs_not_made_are_absent_not_zero(tables):
    ra = tables["robust_accuracy"]
    assert ra.filter(pl.col("loss") == "tmifpe", pl.col("budget") == 100).height == 0
    assert ra.filter(pl.col("loss") == "tmifpe", pl.col("precision") == "fp16").height == 0
    assert ra.height == 6  # ce: 3 precisions at 10 + fp32 at 100; tmifpe: 2 at 10
    pe = one(tables["precision_effect"], loss="ce", precision="fp32", budget=100)
    assert pe["fp64_robust_acc"] is None and pe["delta_vs_fp64_pp"] is None
    assert tables["leaderboard"].height == 0


def test_against_autoattack_pointwise(tables):
    row = one(tables["vs_autoattack"], loss="ce", targeted=False, precision="fp32", budget=10)
    assert row["n_common"] == 4
    assert (row["robust_acc"], row["aa_robust_acc"]) == (0.25, 0.5)
    assert row["gap_pp"] == pytest.approx(-25.0)
    assert row["n_broken_attack_only"] == 1  # example 1: broken by ce, robust under AA
    assert row["n_broken_aa_only"] == 0
    assert row["n_both_robust"] == 1 and row["n_both_nonrobust"] == 2
    tm = one(tables["vs_autoattack"], loss="tmifpe", targeted=False)
    assert tm["n_broken_attack_only"] == 1 and tm["n_broken_aa_only"] == 1  # examples 1 and 3


def test_cost_per_point_and_ratio(tables):
    row = one(tables["vs_autoattack"], loss="ce", targeted=False, precision="fp32", budget=10)
    assert row["cost_per_point"] == pytest.approx((3 * 21 + 1) / 4)  # forward + backward
    aa_cost = (2 * (100 + 200 + 300 + 400) + 1000 + 1000) / 4  # 2·n_grad (fwd+bwd) + n_queries
    assert row["aa_cost_per_point"] == pytest.approx(aa_cost)
    assert row["cost_ratio"] == pytest.approx(16.0 / aa_cost)
    assert row["wall_time_per_point_s"] == pytest.approx(0.1)  # 0.4 s / 4 points
    assert row["aa_wall_time_per_point_s"] == pytest.approx(2.0)  # total 8 s / 4 points
    assert row["wall_time_ratio"] == pytest.approx(0.05)
    no_timing = one(tables["attack_cost"], loss="tmifpe", targeted=False)
    assert no_timing["wall_time_per_point_s"] is None
    aa = one(tables["autoattack"], model=MODEL)
    assert (aa["robust_acc"], aa["clean_acc"], aa["n_broken_apgd_t"]) == (0.5, 0.75, 1)


def test_precision_effect(tables):
    fp16 = one(tables["precision_effect"], loss="ce", precision="fp16", budget=10)
    assert fp16["robust_acc"] == 0.5 and fp16["fp64_robust_acc"] == 0.25
    assert fp16["delta_vs_fp64_pp"] == pytest.approx(25.0)
    assert fp16["n_false_success"] == 1
    assert fp16["n_dtype_only_examples"] == 2 and fp16["dtype_only_hits"] == 4
    assert fp16["zero_grad_steps"] == 8 and fp16["backward_passes"] == 30
    assert fp16["zero_grad_fraction"] == pytest.approx(8 / 30)
    assert fp16["nonfinite_steps"] == 4
    fp32 = one(tables["precision_effect"], loss="ce", precision="fp32", budget=10)
    assert fp32["delta_vs_fp64_pp"] == 0.0 and fp32["zero_grad_fraction"] == 0.0
    assert fp32["n_dtype_only_examples"] == 0 and fp32["dtype_only_hits"] == 0


def test_nan_inf_and_missing_margins_are_surfaced(tmp_path):
    rows = run_rows([(clean, clean, -1) for clean, _, _ in CE_FP32], precision="fp32")
    rows[0]["margin_fp32"] = math.nan
    rows[0]["nonfinite_fp32"] = True  # NaN verdict logits: counted, never broken
    rows[1]["margin_fp64"] = math.inf
    rows[2]["margin_fp32"] = None
    rows[3]["nonfinite_steps"] = 3
    bad = write_cell(cell_frame(rows, model=MODEL, loss="mifpe", budget=10), tmp_path)
    good = write_cell(cell_frame(run_rows(CE_FP32, precision="fp32"), model=MODEL, loss="ce",
                                 budget=10), tmp_path)
    aa = write_autoattack(aa_frame([{"example": 0, "clean_correct": True, "robust_fp32": True,
                                     "margin_fp32": -math.inf}], model=MODEL), tmp_path)
    tables = aggregate([bad, good], [aa], [])
    nf = tables["nonfinite"]
    assert nf["loss"].to_list() == ["autoattack", "mifpe"]  # the clean ce run is not listed
    row = one(nf, loss="mifpe")
    assert (row["n_nan_margin_fp32"], row["n_null_margin_fp32"], row["n_inf_margin_fp64"]) == (
        1, 1, 1)
    assert (row["n_examples_nonfinite_steps"], row["nonfinite_steps"]) == (1, 3)
    assert (row["n_nonfinite_fp32"], row["n_nonfinite_fp64"]) == (1, 0)
    aa_row = one(nf, loss="autoattack")
    assert aa_row["budget"] is None and aa_row["n_inf_margin_fp32"] == 1
    assert aa_row["n_nan_margin_fp64"] is None
    # NaN margins do not remove the examples from the accuracies.
    mifpe = one(tables["robust_accuracy"], loss="mifpe")
    assert (mifpe["n"], mifpe["n_robust"]) == (4, 3)


def test_robust_accuracy_against_iterations(tables):
    steps = tables["robust_vs_iterations"].filter(
        pl.col("loss") == "ce", pl.col("precision") == "fp32", pl.col("budget") == 10)
    # 3 clean-correct; broken at 3 and 7 (example 1 and 3).
    assert steps.select("iteration", "n_robust").rows() == [(0, 3), (3, 2), (7, 1), (10, 1)]
    first = one(tables["robust_vs_iterations"], loss="tmifpe", targeted=True, iteration=0)
    assert first["n_robust"] == 2  # example 1 broken at the random start


def test_leaderboard_rows_only_for_mapped_models(grid):
    leaderboard = {"cifar10": {"Some2020Model": {"clean_acc": 80.0, "autoattack_acc": 40.0,
                                                 "source": "hand-made"}}}
    tables = aggregate(grid["cells"], grid["aa"], grid["timing"], leaderboard=leaderboard,
                       model_ids={MODEL: ("cifar10", "Some2020Model"), "other": ("x", "y")})
    row = one(tables["leaderboard"], model=MODEL)
    assert row["robustbench_id"] == "Some2020Model"
    assert row["measured_clean_acc"] == pytest.approx(75.0)
    assert row["clean_diff_pp"] == pytest.approx(-5.0)
    assert row["measured_aa_acc"] == pytest.approx(50.0)
    assert row["aa_diff_pp"] == pytest.approx(10.0)
    assert row["reported_aa_in_ci"] is True  # 40 inside Wilson [15.0, 85.0]
    unmapped = aggregate(grid["cells"], grid["aa"], grid["timing"], leaderboard=leaderboard,
                         model_ids={})
    assert unmapped["leaderboard"].height == 0
    assert unmapped["leaderboard"].columns == tables["leaderboard"].columns


def test_missing_listed_file_is_refused_by_name(grid, tmp_path):
    missing = tmp_path / "attack" / MODEL / "dlr" / "b10.parquet"
    with pytest.raises(FileNotFoundError) as err:
        aggregate([*grid["cells"], missing], grid["aa"], grid["timing"])
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"b10\.timing\.json"):
        aggregate(grid["cells"], grid["aa"], [missing.with_name("b10.timing.json")])


def test_unlisted_files_in_the_same_folder_are_ignored(grid):
    folder = grid["cells"][0].parent
    (folder / "notes.txt").write_text("not a result", encoding="utf-8")
    (folder / "b5.parquet").write_bytes(b"not parquet either")
    only_ce10 = aggregate(grid["cells"][:1], [], [])
    assert sorted(only_ce10["robust_accuracy"]["budget"].unique().to_list()) == [10]
    assert only_ce10["robust_accuracy"]["loss"].unique().to_list() == ["ce"]
    assert only_ce10["autoattack"].height == 0


def test_listing_a_file_twice_is_refused(grid):
    with pytest.raises(ValueError, match="duplicate attack cell rows"):
        aggregate([grid["cells"][0], grid["cells"][0]], [], [])


def test_timing_file_without_its_result_file_is_refused(grid):
    with pytest.raises(ValueError, match="no matching listed result file"):
        aggregate(grid["cells"][1:], grid["aa"], grid["timing"])


def test_missing_column_is_refused(tmp_path):
    frame = cell_frame(run_rows(CE_FP32, precision="fp32"), model=MODEL, loss="ce", budget=10)
    path = write_cell(frame.drop("first_success_iter"), tmp_path)
    with pytest.raises(ValueError, match="lacks columns: first_success_iter"):
        aggregate([path], [], [])


def test_metrics_json(tables):
    metrics = metrics_json(tables)
    net = metrics["default"][MODEL]
    assert net["ce_untargeted"] == {"fp16": 0.5, "fp32": 0.25, "fp64": 0.25}
    assert net["tmifpe_targeted"] == {"fp32": 0.25}
    assert net["clean_acc"] == 0.75 and net["autoattack_acc"] == 0.5
    json.dumps(metrics, allow_nan=False)


def test_metrics_round_to_four_decimals(tmp_path):
    frame = cell_frame(run_rows([(True, True, -1), (True, False, 0), (True, False, 0)],
                                precision="fp32"), model=MODEL, loss="ce", budget=10)
    tables = aggregate([write_cell(frame, tmp_path)], [], [])
    assert metrics_json(tables)["default"][MODEL]["ce_untargeted"]["fp32"] == 0.3333


def test_write_aggregates_is_atomic_sorted_and_stable(tables, grid, tmp_path):
    out = tmp_path / "agg"
    first = write_aggregates(tables, out)
    assert {p.name for p in first} == {f"{n}{s}" for n in TABLE_KEYS for s in (".parquet", ".csv")}
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in first)  # no temp files
    snapshot = {p.name: p.read_bytes() for p in first}
    again = aggregate(grid["cells"], grid["aa"], grid["timing"])
    write_aggregates(again, out)
    assert {p.name: p.read_bytes() for p in first} == snapshot
    ra = pl.read_csv(out / "robust_accuracy.csv")
    assert ra.equals(ra.sort(TABLE_KEYS["robust_accuracy"]))
    assert pl.read_parquet(out / "robust_accuracy.parquet").equals(tables["robust_accuracy"])


def test_unreadable_or_mistyped_file_is_refused_by_name(tmp_path):
    junk = tmp_path / "b10.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot be read as documented") as err:
        aggregate([junk], [], [])
    assert str(junk) in str(err.value) and "\n" not in str(err.value)
    frame = cell_frame(run_rows(CE_FP32, precision="fp32"), model=MODEL, loss="ce", budget=10)
    path = write_cell(frame.with_columns(pl.lit("ten").alias("budget")), tmp_path / "typed")
    with pytest.raises(ValueError, match="cannot be read as documented"):
        aggregate([path], [], [])


def test_multi_batch_cell_one_row_per_run_with_summed_wall_time(tmp_path):
    """A cell run in 3 batches (points 0-1, 2, 3) has 3 timing records per run: the cost and
    AutoAttack tables keep one row per run, with wall time Σ wall / Σ points."""
    grid = write_grid(tmp_path)
    batches = [(0, 2, 0.3), (2, 1, 0.25), (3, 1, 0.25)]  # (start, n_examples, wall_time_s)
    records = [{"precision": p, "targeted": False, "start": start, "n_examples": n,
                "n_attacked": n, "wall_time_s": scale * w}
               for p, scale in (("fp16", 1.0), ("fp32", 2.0), ("fp64", 4.0))
               for start, n, w in batches]
    assert len(records) == 9
    write_timing(grid["cells"][0], records)
    tables = aggregate(grid["cells"], grid["aa"], grid["timing"])
    for name in ("attack_cost", "vs_autoattack"):
        keys = ["model", "loss", "targeted", "precision", "budget"]
        assert tables[name].select(keys).is_duplicated().sum() == 0, name
    cost = one(tables["attack_cost"], loss="ce", targeted=False, precision="fp32", budget=10)
    assert cost["n"] == 4 and cost["wall_time_per_point_s"] == pytest.approx(1.6 / 4)
    vs = one(tables["vs_autoattack"], loss="ce", targeted=False, precision="fp64", budget=10)
    assert vs["wall_time_per_point_s"] == pytest.approx(3.2 / 4)
    assert vs["wall_time_ratio"] == pytest.approx(0.8 / 2.0)
    assert tables["vs_autoattack"].height == tables["attack_cost"].height


def test_timing_batch_listed_twice_is_refused(tmp_path):
    grid = write_grid(tmp_path)
    rec = {"precision": "fp32", "targeted": False, "start": 0, "n_examples": 4,
           "n_attacked": 4, "wall_time_s": 0.4}
    write_timing(grid["cells"][0], [rec, rec])
    with pytest.raises(ValueError, match="batch listed twice"):
        aggregate(grid["cells"], grid["aa"], grid["timing"])
