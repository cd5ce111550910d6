"""Figures (matplotlib): byte-stable SVG and PDF, escaped names, PDFs for LaTeX; `dvc plots
show` renders one line per model x attack x precision (checked by rendering the Vega-Lite spec
DVC fills)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from support.synthetic_results import demo_results

from tmifpe.aggregate import aggregate, write_aggregates
from tmifpe.report import html_report
from tmifpe.report.plots import all_figures, write_figures

ROOT = Path(__file__).resolve().parents[1]
NASTY = "m$x_1$<b>&"  # mathtext and markup characters in a model name


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    files = demo_results(root, models={"digits_std": ("digits", 0.93, 0.55),
                                       NASTY: ("mnist", 0.9, 0.5)}, n_examples=12)
    return aggregate(files.cell_files, files.aa_files, files.timing_files)


def test_figures_are_byte_stable_and_undated(tables, tmp_path):
    first, second = all_figures(tables), all_figures(tables)
    assert [f.key for f in first] == ["fig-iterations", "fig-precision", "fig-cost"]
    for a, b in zip(first, second, strict=True):
        assert a.svg == b.svg and a.pdf == b.pdf
        assert a.pdf.startswith(b"%PDF") and b"CreationDate" not in a.pdf
        assert "<dc:date>" not in a.svg and a.svg.startswith("<svg")
        assert "http" not in a.svg  # no namespace URLs or metadata links inline
    pdfs_a = write_figures(tables, tmp_path / "a")
    pdfs_b = write_figures(tables, tmp_path / "b")
    assert [p.name for p in pdfs_a] == ["iterations.pdf", "precision.pdf", "cost.pdf"]
    assert [p.read_bytes() for p in pdfs_a] == [p.read_bytes() for p in pdfs_b]


def test_names_are_escaped_text_not_mathtext(tables):
    svg = "".join(str(f.svg) for f in all_figures(tables))
    assert "m$x_1$&lt;b&gt;&amp;" in svg  # escaped by the SVG writer, dollars kept literally
    assert "<b>" not in svg and "<script" not in svg.lower()
    assert "budget 50" in svg  # panel titles say "budget", not "N ="
    assert "N = " not in svg


def test_html_inlines_the_svg_figures(tables):
    html = html_report(tables, title="T", meta={})
    assert html.count('<svg class="figure"') == 3
    assert "budget 50" in html and "N = " not in html


def test_empty_tables_give_no_figures(tmp_path):
    empty = aggregate([], [], [])
    assert all(f.empty for f in all_figures(empty))
    assert write_figures(empty, tmp_path) == []
    assert "No data." in html_report(empty, title="T", meta={})


# ---------------------------------------------------------------- dvc plots


def _series(frame: pl.DataFrame, keys: list[str]) -> int:
    return frame.select(keys).unique().height


def test_dvc_plots_show_one_line_per_model_attack_precision(tables, tmp_path):
    """`dvc plots show --json` with this repo's `plots:` section and template, on aggregate CSVs;
    the filled Vega-Lite spec is rendered (vl-convert, the Vega engine) and the line paths
    counted: one per (model, loss, targeted, precision) [and budget for iterations]."""
    import vl_convert as vlc  # dev dependency: Vega-Lite -> SVG with the Vega engine

    dvc = [sys.executable, "-m", "dvc"]
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=repo, check=True, timeout=120)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    write_aggregates(tables, repo / "results" / "aggregate")
    proc = subprocess.run([*dvc, "plots", "show", "--json"], cwd=repo, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)["data"]
    expected = {
        "robust accuracy vs budget": _series(
            tables["robust_accuracy"], ["model", "loss", "targeted", "precision"]),
        "robust accuracy vs iterations": _series(
            tables["robust_vs_iterations"], ["model", "loss", "targeted", "precision", "budget"]),
    }
    assert set(shown) == set(expected)
    for name, n_series in expected.items():
        spec = shown[name][0]["content"]
        svg = vlc.vegalite_to_svg(spec)
        groups = re.findall(r'<g class="mark-line role-mark[^"]*"[^>]*>(.*?)</g>', svg, re.S)
        n_paths = sum(g.count("<path") for g in groups)
        assert n_paths == n_series > 2 * 5 * 2, name  # 2 models x 5 losses x 2 kinds at least
        assert "digits_std" in svg and "m$x_1$&lt;b" in svg  # a facet per model, escaped
