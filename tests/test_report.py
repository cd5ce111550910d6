"""HTML and LaTeX reports: escaping, bold best values with ties, missing runs, byte-stability,
and (when the tools are installed) a pdflatex compile and a headless Chromium render."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from support.synthetic_results import (
    aa_frame,
    cell_frame,
    demo_results,
    write_autoattack,
    write_cell,
)

from tmifpe.aggregate import aggregate
from tmifpe.report import html_report, latex_tables, render_html, render_latex
from tmifpe.report.latex import Tex, cell_tex, tex_escape
from tmifpe.report.views import Cell, dtype_only_grid, mark_best

ROOT = Path(__file__).resolve().parents[1]
CHECK_HTML = ROOT / "scripts" / "check_html_render.py"
COMPILE_LATEX = ROOT / "scripts" / "compile_latex.sh"
NASTY = "m_1&<script>%#$~^{x}\\y"  # every character LaTeX or HTML treats specially
NASTY_TEX = (r"m\_1\&\textless{}script\textgreater{}\%\#\$\textasciitilde{}"
             r"\textasciicircum{}\{x\}\textbackslash{}y")
META = {"suite": "default", "commit": "0123abc"}


def verdict_rows(robust: list[bool], *, precision: str = "fp32") -> list[dict]:
    return [{"example": i, "precision": precision, "targeted": False, "clean_correct": True,
             "robust_fp32": r, "first_success_iter": -1 if r else 1, "n_forward": 11,
             "n_backward": 10} for i, r in enumerate(robust)]


@pytest.fixture
def tie_tables(tmp_path):
    """ce and tmifpe tie for the lowest robust accuracy (1/4); cw is higher (3/4) and was run
    at budget 10 only; the model name is full of special characters; one NaN margin."""
    files = []
    for loss, robust, budgets in (("ce", [True, False, False, False], (10, 20)),
                                  ("tmifpe", [False, True, False, False], (10, 20)),
                                  ("cw", [True, True, True, False], (10,))):
        for budget in budgets:
            frame = cell_frame(verdict_rows(robust), model=NASTY, loss=loss, budget=budget)
            if loss == "cw":
                nan_first = frame["margin_fp32"].scatter(0, float("nan"))
                frame = frame.with_columns(margin_fp32=nan_first)
            files.append(write_cell(frame, tmp_path))
    aa = aa_frame([{"example": i, "clean_correct": True, "robust_fp32": i < 2, "n_grad": 1900}
                   for i in range(4)], model=NASTY)
    return aggregate(files, [write_autoattack(aa, tmp_path)], [])


@pytest.fixture(scope="module")
def demo_tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    models = {"digits_std": ("digits", 0.93, 0.55), NASTY: ("mnist", 0.9, 0.5)}
    files = demo_results(root, models=models, n_examples=24)
    leaderboard = {"mnist": {"TRADES": {"clean_acc": 99.48, "autoattack_acc": 92.81}}}
    return aggregate(files.cell_files, files.aa_files, files.timing_files,
                     leaderboard=leaderboard, model_ids={NASTY: ("mnist", "TRADES")})


# ---------------------------------------------------------------- escaping


def test_tex_escape_every_special_character():
    assert tex_escape(NASTY) == NASTY_TEX
    assert tex_escape("C&W 50%") == r"C\&W 50\%"
    assert isinstance(cell_tex(Cell(12.5, best=True)), Tex)


def test_html_escapes_names_and_has_no_script(demo_tables):
    html = html_report(demo_tables, title="Report <b>x</b>", meta={"note": "<script>"})
    assert "<script" not in html.lower()
    assert "m_1&amp;&lt;script&gt;%#$~^{x}\\y" in html
    assert "Report &lt;b&gt;x&lt;/b&gt;" in html
    assert "C&amp;W" in html


def test_html_is_self_contained(demo_tables):
    html = html_report(demo_tables, title="t", meta=META)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in html and "@import" not in html and "<svg" in html


def test_latex_escapes_names(demo_tables):
    tex = latex_tables(demo_tables)
    assert NASTY_TEX in tex
    assert "C\\&W" in tex
    assert "<script" not in tex


# ---------------------------------------------------------------- best values, missing runs


def test_mark_best_bolds_all_ties_and_needs_two_values():
    rows = mark_best(
        [("a", [20.0, 5.0, None]), ("b", [20.004, 7.0, 3.0]), ("c", [30.0, None, None])]
    )
    assert [c.best for c in rows[0].cells] == [True, True, False]
    assert [c.best for c in rows[1].cells] == [True, False, False]  # 20.004 prints as 20.00
    assert [c.best for c in rows[2].cells] == [False, False, False]


def test_latex_bolds_tied_best_values(tie_tables):
    tex = latex_tables(tie_tables)
    main = tex.split(r"\begin{table}")[1]
    assert re.search(r"^CE & \\textbf\{25\.00\} \\\\$", main, re.M)
    assert re.search(r"^T-MIFPE & \\textbf\{25\.00\} \\\\$", main, re.M)
    assert re.search(r"^C\\&W & 75\.00 \\\\$", main, re.M) is None  # cw not run at budget 20
    assert re.search(r"^C\\&W & -- \\\\$", main, re.M)
    assert re.search(r"^AutoAttack & 50\.00 \\\\$", main, re.M)


def test_missing_runs_show_a_dash(tie_tables):
    tex = latex_tables(tie_tables)
    budget = tex.split(r"\begin{table}")[3]
    assert re.search(r"^C\\&W & 75\.00 & -- \\\\$", budget, re.M)
    html = html_report(tie_tables, title="t", meta=META)
    assert '<td class="num">–</td>' in html


def test_html_bolds_ties_and_surfaces_nan(tie_tables):
    html = html_report(tie_tables, title="t", meta=META)
    main = html.split('<section id="main">')[1].split("</section>")[0]
    assert main.count("<strong>25.00</strong>") == 2
    nonfinite = html.split('<section id="nonfinite">')[1].split("</section>")[0]
    assert "C&amp;W" in nonfinite and "No NaN or Inf" not in nonfinite


# ---------------------------------------------------------------- determinism and files


def test_reports_are_byte_stable(demo_tables, tmp_path):
    out = []
    for name in ("a", "b"):
        html = render_html(demo_tables, tmp_path / name / "index.html", title="T", meta=META)
        tex, standalone = render_latex(demo_tables, tmp_path / name / "tables.tex")
        out.append([p.read_bytes() for p in (html, tex, standalone)])
    assert out[0] == out[1]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "index.html", "tables.tex", "tables_standalone.tex"]


def test_byte_stable_across_independent_aggregations(tmp_path):
    texts = []
    for name in ("x", "y"):
        files = demo_results(tmp_path / name, n_examples=12)
        tables = aggregate(files.cell_files, files.aa_files, files.timing_files)
        texts.append((html_report(tables, title="T", meta=META), latex_tables(tables)))
    assert texts[0] == texts[1]


def test_empty_tables_render(tmp_path):
    tables = aggregate([], [], [])
    html = render_html(tables, tmp_path / "index.html", title="empty", meta={})
    assert "No data." in html.read_text(encoding="utf-8")
    tex, _ = render_latex(tables, tmp_path / "tables.tex")
    assert r"\begin{table}" not in tex.read_text(encoding="utf-8")


# ---------------------------------------------------------------- external tools


IN_CI = os.environ.get("CI") == "true"  # .ci/run installs the tools: there a missing one fails


def needs_tool(tool: str, packages: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(tool) is None and not IN_CI,
        reason=f"{tool} not installed: run `make test SYSTEM_DEPS=1` as root (or apt-get install "
               f"{packages}); CI installs it (.ci/run)")


@needs_tool("pdflatex", "texlive-latex-recommended texlive-latex-base")
def test_latex_compiles(demo_tables, tmp_path):
    render_latex(demo_tables, tmp_path / "tables.tex")
    proc = subprocess.run(["bash", str(COMPILE_LATEX), str(tmp_path), str(tmp_path / "t.pdf")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")


def _chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)


needs_chromium = pytest.mark.skipif(
    _chromium() is None and not IN_CI,
    reason="chromium not installed: run `make test SYSTEM_DEPS=1` as root (or apt-get install "
           "chromium); CI installs it (.ci/run)")


@needs_chromium
def test_html_renders_in_chromium_without_errors(demo_tables, tmp_path):
    page = render_html(demo_tables, tmp_path / "index.html", title="T", meta=META)
    png = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(CHECK_HTML), str(page), "--screenshot", str(png),
                           "--height", "1200"], capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK") and proc.stdout.count("\n") == 1
    assert png.read_bytes().startswith(b"\x89PNG")


@needs_chromium
def test_check_script_catches_console_errors_and_network(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                   "<script>console.error('boom')</script></body></html>", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(CHECK_HTML), str(bad), "--height", "300"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 1
    assert "boom" in proc.stdout and "example.invalid" in proc.stdout


def test_dtype_only_hits_are_shown_per_precision(demo_tables):
    """The precision section shows the points with dtype-only hits per attack precision as a
    grid of its own (and counts in the precision table), not folded into robust accuracy."""
    grid = dtype_only_grid(demo_tables)
    assert grid.columns == ("fp16", "bf16", "fp32", "fp64") and grid.blocks
    col = {p: i for i, p in enumerate(grid.columns)}
    cells = [r.cells for b in grid.blocks for r in b.rows]
    low = [c[col[p]].value for c in cells for p in ("fp16", "bf16")]
    assert any(v for v in low if v is not None)
    assert all(c[col["fp32"]].value in (0.0, None) for c in cells)
    pe = demo_tables["precision_effect"]
    expected = pe.filter(pl.col("precision") == "fp16")["n_dtype_only_examples"].sum()
    assert expected > 0
    html = html_report(demo_tables, title="t", meta=META)
    assert "Dtype-only hits by attack precision" in html and "Dtype-only hits" in html
    assert "fresh fp32 pass did not" in latex_tables(demo_tables)  # the caption, in LaTeX too
