"""The report's "pure cast vs autocast" table (issue 19, item 1): fp16 beside amp-fp16 and bf16
beside amp-bf16 with fp32/fp64 for reference, the symptoms of each pair, and CE's gap limits of
docs/theory.md §3 in the pure-cast columns only; in HTML and LaTeX, escaped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from support.synthetic_results import (
    AUTOCAST_PENALTY,
    PRECISION_PENALTY,
    aa_frame,
    cell_frame,
    demo_results,
    write_autoattack,
    write_cell,
)

from tmifpe.aggregate import aggregate
from tmifpe.losses.tmifpe.tstar import gap_thresholds
from tmifpe.precision import Precision
from tmifpe.report import html_report, latex_tables, render_latex
from tmifpe.report.families import ce_limits, family_table

ROOT = Path(__file__).resolve().parents[1]
NASTY = "m_1&<script>%#$~^{x}\\y"
NASTY_TEX = (r"m\_1\&\textless{}script\textgreater{}\%\#\$\textasciitilde{}"
             r"\textasciicircum{}\{x\}\textbackslash{}y")
META = {"suite": "default"}


def rows(precision: str, robust: list[bool], **extra: list[int]) -> list[dict]:
    """One run's rows: ``robust[i]`` per example; ``extra``: per-example counter columns."""
    out = []
    for i, r in enumerate(robust):
        row = {"example": i, "precision": precision, "targeted": False, "clean_correct": True,
               "robust_fp32": r, "first_success_iter": -1 if r else 1, "n_forward": 11,
               "n_backward": 10}
        out.append(row | {k: v[i] for k, v in extra.items()})
    return out


@pytest.fixture
def pair_tables(tmp_path):
    """CE at budget 10 on 4 points: fp16 3/4 robust (one dtype-only hit, one skipped step),
    amp-fp16 1/4 (two missed hits on one point), fp64 2/4, fp32 on 8 points 4/8; no bf16 pair
    (amp-bf16 alone)."""
    frame = cell_frame([
        *rows("fp16", [True, True, True, False], dtype_only_hits=[0, 2, 0, 0],
              nonfinite_steps=[0, 0, 1, 0]),
        *rows("amp-fp16", [True, False, False, False], missed_hits=[0, 0, 2, 0]),
        *rows("amp-bf16", [True, True, False, False]),
        *rows("fp64", [True, True, False, False]),
        *rows("fp32", [True, False] * 4),
    ], model=NASTY, loss="ce", budget=10)
    aa = aa_frame([{"example": i, "clean_correct": True, "robust_fp32": i < 2}
                   for i in range(4)], model=NASTY)
    return aggregate([write_cell(frame, tmp_path)], [write_autoattack(aa, tmp_path)], [])


@pytest.fixture(scope="module")
def demo_amp(tmp_path_factory):
    files = demo_results(tmp_path_factory.mktemp("amp"), n_examples=16, budgets=(10,),
                         precisions={**PRECISION_PENALTY, **AUTOCAST_PENALTY})
    return aggregate(files.cell_files, files.aa_files, files.timing_files)


def test_limits_are_the_theory_for_pure_dtypes_only():
    for p in (Precision.FP16, Precision.BF16, Precision.FP32, Precision.FP64):
        rounding, underflow = gap_thresholds(p.dtype)
        assert ce_limits(p) == f"{rounding:.2f} / {underflow:.2f}"
    assert ce_limits(Precision.FP16) == "7.62 / 17.33"
    with pytest.raises(ValueError, match="amp-fp16"):
        ce_limits(Precision.AMP_FP16)


def test_pair_row_shows_both_families_and_references(pair_tables):
    table = family_table(pair_tables)
    header = [*table.lead, *(c for g in table.groups for c in g.columns)]
    assert len(table.rows) == 1  # the bf16 pair is incomplete: no row
    row = dict(zip(header, table.rows[0], strict=True))
    limits = [g for g in table.groups if "CE gap limits" in g.columns]
    assert [g.label for g in limits] == ["Pure cast"]  # only under the pure-cast columns
    robust = [i for i, h in enumerate(header) if h == "Robust %"]
    assert [table.rows[0][i] for i in robust] == ["75.00", "25.00"]  # pure, autocast
    assert row["Pair"] == "fp16 / amp-fp16" and row["Points"] == "4"
    assert row["CE gap limits"] == "7.62 / 17.33"
    assert row["− pure (pp)"] == "-50.00"
    assert row["fp32"] == "50.00 (n=8)"  # another point set is flagged, not hidden
    assert row["fp64"] == "50.00"
    assert row["Dtype-only hits"] == "1 / 0"
    assert row["Missed hits"] == "0 / 1"
    assert row["Non-finite steps"] == "1 / 0"
    assert "do not apply under autocast" in table.note


def test_html_and_latex_show_the_table_escaped(pair_tables):
    html = html_report(pair_tables, title="t", meta=META)
    section = html.split('<section id="families">')[1].split("</section>")[0]
    assert "Pure cast vs autocast" in section and 'href="#families"' in html
    assert "m_1&amp;&lt;script&gt;%#$~^{x}\\y" in section and "<script" not in section
    assert "7.62 / 17.33" in section and "50.00 (n=8)" in section
    tex = latex_tables(pair_tables)
    part = tex.split(r"\label{tab:tmifpe-families}")[1].split(r"\end{table}")[0]
    assert NASTY_TEX in part and "<script" not in part
    assert re.search(r"^" + re.escape(NASTY_TEX) + r" & CE & 10 & 4 & fp16 / amp-fp16 & "
                     r"7\.62 / 17\.33 & 75\.00 & 25\.00 & -50\.00 & 50\.00 \(n=8\) & 50\.00 & "
                     r"1 / 0 & 0 / 1 & 1 / 0 \\\\$", part, re.M)
    assert r"\multicolumn{2}{c}{Pure cast}" in part


def test_every_complete_pair_of_the_demo_grid_has_a_row(demo_amp):
    table = family_table(demo_amp)
    pe = demo_amp["precision_effect"]
    runs = pe.filter(pl.col("precision").is_in(["fp16", "amp-fp16", "bf16", "amp-bf16"]))
    expected = runs.height // 2  # every run has its partner in the demo grid
    assert len(table.rows) == expected > 0
    # the pure and autocast robust accuracies are those of the aggregate frame
    acc = {(r["model"], r["loss"], r["targeted"], r["precision"]): r["robust_acc"]
           for r in pe.iter_rows(named=True)}
    loss_of = {"CE": "ce", "C&W": "cw", "DLR": "dlr", "MIFPE": "mifpe", "T-MIFPE": "tmifpe"}
    for r in table.rows:
        model, attack, pair = r[0], r[1], r[4]
        loss, targeted = loss_of[attack.removesuffix(" targeted")], attack.endswith("targeted")
        pure, amp = pair.split(" / ")
        assert r[6] == f"{100 * acc[(model, loss, targeted, pure)]:.2f}"
        assert r[7] == f"{100 * acc[(model, loss, targeted, amp)]:.2f}"


def test_without_autocast_runs_the_table_is_empty(tmp_path):
    files = demo_results(tmp_path, n_examples=8, budgets=(10,))
    tables = aggregate(files.cell_files, files.aa_files, files.timing_files)
    assert family_table(tables).rows == ()
    html = html_report(tables, title="t", meta=META)
    assert "No model × attack × budget ran both" in html
    assert "tmifpe-families" not in latex_tables(tables)


@pytest.mark.skipif(shutil.which("pdflatex") is None and os.environ.get("CI") != "true",
                    reason="pdflatex not installed (CI installs it: .ci/run)")
def test_latex_with_the_table_compiles(demo_amp, pair_tables, tmp_path):
    for name, tables in (("demo", demo_amp), ("pair", pair_tables)):
        render_latex(tables, tmp_path / name / "tables.tex")
        proc = subprocess.run(["bash", str(ROOT / "scripts/compile_latex.sh"),
                               str(tmp_path / name), str(tmp_path / f"{name}.pdf")],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
