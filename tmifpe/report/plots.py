"""Figures from the aggregate tables, drawn with matplotlib (object API, no pyplot state).

Each figure is rendered twice from the same ``matplotlib.figure.Figure``: an SVG inlined in the
HTML report and a vector PDF under ``reports/figures/`` for a LaTeX paper. Both are byte-stable:
the SVG's ids come from a fixed ``svg.hashsalt`` and neither file carries a date
(``metadata={"Date": None}`` / ``{"CreationDate": None}``). Labels are plain text
(``text.parse_math`` off), so a ``$`` in a model name is never read as mathtext, and the SVG
writer escapes every label.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import polars as pl
from markupsafe import Markup
from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from tmifpe.report.output import write_bytes_atomic
from tmifpe.report.views import (
    HEADLINE_PRECISION,
    LOSS_LABELS,
    LOSS_ORDER,
    attack_rank,
    attacks,
    common_budgets,
    model_label,
    models,
    precision_rank,
)

FIGURES_DIR = Path("reports/figures")
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")
LOSS_COLORS = dict(zip(LOSS_ORDER, OKABE_ITO, strict=False))
PRECISION_COLORS = {"fp16": "#D55E00", "bf16": "#E69F00", "fp32": "#0072B2", "fp64": "#009E73"}
AA_COLOR = "#555555"
RC = {
    "svg.hashsalt": "tmifpe", "svg.fonttype": "none", "pdf.fonttype": 42,
    "text.parse_math": False, "font.family": "DejaVu Sans", "font.size": 9,
    "axes.grid": True, "grid.color": "#e6e6e6", "axes.spines.top": False,
    "axes.spines.right": False, "legend.frameon": False,
}
SVG_METADATA = {"Date": None, "Creator": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None}


@dataclass(frozen=True)
class Figure:
    """A rendered figure: ``svg`` (inline markup, empty when there is no data) and ``pdf``."""

    key: str
    title: str
    caption: str
    svg: Markup
    pdf: bytes

    @property
    def empty(self) -> bool:
        return not self.svg


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(RC):
        yield


def short_name(loss: str, targeted: bool) -> str:
    return LOSS_LABELS.get(loss, loss) + ("-T" if targeted else "")


def loss_color(loss: str) -> str:
    if loss in LOSS_COLORS:
        return LOSS_COLORS[loss]
    return OKABE_ITO[-1 - (sum(map(ord, loss)) % 2)]


def _by_model(frame: pl.DataFrame, tables: dict) -> list[tuple[str, tuple, pl.DataFrame]]:
    all_models = models(tables)
    out = []
    for m in all_models:
        part = frame.filter(pl.col("suite") == m[0], pl.col("model") == m[2])
        if part.height:
            out.append((model_label(m, all_models), m, part))
    return out


def _aa_acc(tables: dict) -> dict[tuple, dict]:
    return {(r["suite"], r["dataset"], r["model"]): r
            for r in tables["autoattack"].iter_rows(named=True)}


def _grid(n: int, *, width: float = 3.6, height: float = 2.7) -> tuple[MplFigure, list[Axes]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = MplFigure(figsize=(width * cols, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _attack_handles(frame: pl.DataFrame, with_aa: bool) -> list:
    handles = [Line2D([], [], color=loss_color(lo), ls="--" if t else "-",
                      label=short_name(lo, t)) for lo, t in attacks(frame)]
    if with_aa:
        handles.append(Line2D([], [], color=AA_COLOR, ls=":", marker="D", label="AutoAttack"))
    return handles


def _legend(fig: MplFigure, handles: list) -> None:
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))


def render(key: str, title: str, caption: str, fig: MplFigure | None) -> Figure:
    """SVG (for inlining: no XML prolog) and PDF bytes of ``fig``, both without dates."""
    if fig is None:
        return Figure(key, title, caption, Markup(""), b"")
    with _style():
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata=SVG_METADATA)
        svg = buf.getvalue().decode("utf-8")
        buf = io.BytesIO()
        fig.savefig(buf, format="pdf", metadata=PDF_METADATA)
    # inline in HTML5: no XML prolog, no RDF metadata, no namespace declarations (the HTML
    # parser puts <svg> and xlink:href in their namespaces), so the page names no URL at all
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    head, rest = svg.split(">", 1)
    head = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", head)
    head = head.replace("<svg ", f'<svg class="figure" aria-label="{_attr(title)}" ', 1)
    # ids (figure_1, hashed clip paths and markers) repeat across figures: prefix every id and
    # every reference to one with the figure's key, so the page's ids stay unique
    rest = re.sub(r'( id="| xlink:href="#|url\(#)([A-Za-z][\w.]*)',
                  lambda m: f"{m[1]}{key}-{m[2]}", rest)
    svg = head + ">" + rest
    # matplotlib's SVG writer escapes every text it draws; the title is escaped above
    return Figure(key, title, caption, Markup(svg), buf.getvalue())


def _attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def iterations_figure(tables: dict) -> Figure:
    """Robust accuracy against the iteration, one line per attack at its largest budget."""
    steps = tables["robust_vs_iterations"].filter(pl.col("precision") == HEADLINE_PRECISION)
    steps = steps.filter(pl.col("budget") == pl.col("budget").max().over(
        "suite", "model", "loss", "targeted"))
    aa = _aa_acc(tables)
    parts = _by_model(steps, tables)
    fig = None
    if parts:
        with _style():
            fig, axes = _grid(len(parts))
            for ax, (label, m, part) in zip(axes, parts, strict=True):
                for lo, t in attacks(part):
                    run = part.filter(pl.col("loss") == lo, pl.col("targeted") == t)
                    run = run.drop_nulls("robust_acc").sort("iteration")
                    ax.step(run["iteration"].to_list(), (100 * run["robust_acc"]).to_list(),
                            where="post", color=loss_color(lo), ls="--" if t else "-", lw=1.4)
                ref = aa.get(m, {}).get("robust_acc")
                if ref is not None:
                    ax.axhline(100 * ref, color=AA_COLOR, ls=":", lw=1.2)
                ax.set(title=label, xlabel="iteration", ylabel="robust accuracy (%)")
            _legend(fig, _attack_handles(steps, bool(aa)))
    return render(
        "fig-iterations", "Robust accuracy against iterations",
        f"At {HEADLINE_PRECISION}, each attack's run with its largest budget; the attack's own "
        "verdict at each iteration (dashed: targeted; dotted grey: AutoAttack).", fig)


def precision_figure(tables: dict) -> Figure:
    """Grouped bars: robust accuracy of each attack at each precision, at the largest budget
    every precision ran."""
    ra = tables["robust_accuracy"]
    budgets = common_budgets(ra)
    precisions = sorted(ra["precision"].unique().to_list(), key=precision_rank)
    parts = _by_model(ra, tables)
    fig = None
    if parts:
        with _style():
            fig, axes = _grid(len(parts), width=max(3.6, 1.2 * len(precisions)))
            for ax, (label, m, part) in zip(axes, parts, strict=True):
                part = part.filter(pl.col("budget") == budgets[m])
                acc = {(lo, t, p): v for lo, t, p, v in part.select(
                    "loss", "targeted", "precision", "robust_acc").iter_rows()}
                groups = attacks(part)
                slot = 1.0 / (len(precisions) + 1)
                for k, p in enumerate(precisions):
                    xs = [g + slot * (k + 0.5) for g, (lo, t) in enumerate(groups)
                          if acc.get((lo, t, p)) is not None]
                    ys = [100 * acc[(lo, t, p)] for lo, t in groups
                          if acc.get((lo, t, p)) is not None]
                    ax.bar(xs, ys, width=slot * 0.92, align="edge",
                           color=PRECISION_COLORS.get(p, AA_COLOR))
                ax.set_xticks([g + 0.5 - slot / 2 for g in range(len(groups))],
                              [short_name(lo, t) for lo, t in groups], rotation=35, ha="right")
                ax.grid(axis="x", visible=False)
                ax.set(title=f"{label} (budget {budgets[m]})", ylabel="robust accuracy (%)")
            _legend(fig, [Patch(color=PRECISION_COLORS.get(p, AA_COLOR), label=p)
                          for p in precisions])
    return render(
        "fig-precision", "Precision comparison",
        "Robust accuracy (fp32 verdict) by the precision the attack ran in, at the largest "
        "budget every precision ran (-T: targeted).", fig)


def cost_figure(tables: dict) -> Figure:
    """Robust accuracy against cost per point (log scale), each attack over its budgets."""
    keys = ["suite", "dataset", "model", "loss", "targeted", "precision", "budget"]
    runs = tables["robust_accuracy"].join(tables["attack_cost"].select(*keys, "cost_per_point"),
                                          on=keys, how="inner")
    runs = runs.filter(pl.col("precision") == HEADLINE_PRECISION,
                       pl.col("cost_per_point") > 0, pl.col("robust_acc").is_not_null())
    aa = _aa_acc(tables)
    parts = _by_model(runs, tables)
    fig = None
    if parts:
        with _style():
            fig, axes = _grid(len(parts))
            for ax, (label, m, part) in zip(axes, parts, strict=True):
                for lo, t in sorted(part.select("loss", "targeted").unique().iter_rows(),
                                    key=attack_rank):
                    s = part.filter(pl.col("loss") == lo, pl.col("targeted") == t).sort("budget")
                    ax.plot(s["cost_per_point"].to_list(), (100 * s["robust_acc"]).to_list(),
                            color=loss_color(lo), ls="--" if t else "-", marker="o", ms=3.5,
                            mfc="white" if t else loss_color(lo), lw=1.3)
                ref = aa.get(m, {})
                if ref.get("cost_per_point") and ref.get("robust_acc") is not None:
                    ax.plot([ref["cost_per_point"]], [100 * ref["robust_acc"]], ls="none",
                            marker="D", color=AA_COLOR, ms=5)
                ax.set_xscale("log")  # plain tick labels: mathtext is off for every text
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set(title=label, xlabel="cost per point (passes, log)",
                       ylabel="robust accuracy (%)")
            _legend(fig, _attack_handles(runs, bool(aa)))
    return render(
        "fig-cost", "Cost against robust accuracy",
        f"At {HEADLINE_PRECISION}: each attack across its budgets (cost = forward + backward "
        "passes per point) and AutoAttack (2 × gradient evaluations + forward-only queries per "
        "point, counted the same way); lower and further left is better.", fig)


def all_figures(tables: dict) -> list[Figure]:
    return [iterations_figure(tables), precision_figure(tables), cost_figure(tables)]


def write_figures(tables: dict, out_dir: Path = FIGURES_DIR) -> list[Path]:
    """The figures as vector PDFs ``<out_dir>/<key>.pdf`` (written atomically); returns them."""
    written = []
    for fig in all_figures(tables):
        if fig.empty:
            continue
        path = Path(out_dir) / f"{fig.key.removeprefix('fig-')}.pdf"
        write_bytes_atomic(path, fig.pdf)
        written.append(path)
    return written
