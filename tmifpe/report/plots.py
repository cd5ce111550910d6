"""Figures as inline SVG, built from the aggregate tables without a plotting library.

Geometry (scales, ticks, polylines) is computed here; ``templates/panel.svg.j2`` writes the
markup with autoescaping, so model names can never inject markup. Coordinates are printed with
one decimal, so the same tables give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

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

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")
LOSS_COLORS = dict(zip(LOSS_ORDER, OKABE_ITO, strict=False))
PRECISION_COLORS = {"fp16": "#D55E00", "bf16": "#E69F00", "fp32": "#0072B2", "fp64": "#009E73"}
AA_COLOR = "#555555"
DASH = "5 3"


@dataclass(frozen=True)
class Tick:
    pos: str
    label: str


@dataclass(frozen=True)
class Mark:
    """A polyline (``points``), bar (``x y w h``) or marker (``x y``, ``shape``)."""

    kind: str
    color: str
    label: str
    points: str = ""
    x: str = ""
    y: str = ""
    w: str = ""
    h: str = ""
    dash: str = ""
    shape: str = "circle"
    hollow: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    x_label: str
    y_label: str
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    marks: tuple[Mark, ...]
    slanted_x: bool = False


@dataclass(frozen=True)
class LegendItem:
    label: str
    color: str
    style: str  # "line", "dashed", "box", "diamond"


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    caption: str
    legend: tuple[LegendItem, ...]
    panels: tuple[Panel, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Scale:
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi
    log: bool = False

    def __call__(self, v: float) -> float:
        f = math.log10 if self.log else float
        span = f(self.hi) - f(self.lo)
        t = (f(v) - f(self.lo)) / span if span else 0.5
        return self.a + t * (self.b - self.a)


def c(v: float) -> str:
    return f"{v:.1f}"


def short_name(loss: str, targeted: bool) -> str:
    return LOSS_LABELS.get(loss, loss) + ("-T" if targeted else "")


def loss_color(loss: str) -> str:
    if loss in LOSS_COLORS:
        return LOSS_COLORS[loss]
    return OKABE_ITO[-1 - (sum(map(ord, loss)) % 2)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    raw = (hi - lo) / n if hi > lo else 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw - 1e-12)
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 10) for i in range(max(count, 0))]


def tick_label(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def percent_range(values: list[float], *, from_zero: bool = False) -> tuple[float, float]:
    if not values:
        return 0.0, 100.0
    lo = 0.0 if from_zero else max(0.0, math.floor((min(values) - 2.0) / 5.0) * 5.0)
    hi = min(100.0, math.ceil((max(values) + 2.0) / 5.0) * 5.0)
    return (lo, hi) if hi > lo else (max(0.0, lo - 5.0), min(100.0, hi + 5.0))


def frame_panel(title: str, x: Scale, y: Scale, marks: list[Mark], *, x_label: str,
                y_label: str, x_ticks: list[Tick], width: int, slanted_x: bool = False,
                bottom: int = 40) -> Panel:
    y_ticks = tuple(Tick(c(y(v)), tick_label(v)) for v in nice_ticks(y.lo, y.hi))
    return Panel(title, width, int(y.a) + bottom, int(x.a), width - int(x.b), int(y.b),
                 int(y.a), x_label, y_label, tuple(x_ticks), y_ticks, tuple(marks), slanted_x)


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


def _attack_legend(frame: pl.DataFrame, with_aa: bool) -> tuple[LegendItem, ...]:
    items = [LegendItem(short_name(lo, t), loss_color(lo), "dashed" if t else "line")
             for lo, t in attacks(frame)]
    if with_aa:
        items.append(LegendItem("AutoAttack", AA_COLOR, "diamond"))
    return tuple(items)


def iterations_figure(tables: dict) -> Figure:
    """Robust accuracy against the iteration, one line per attack at its largest budget."""
    steps = tables["robust_vs_iterations"].filter(pl.col("precision") == HEADLINE_PRECISION)
    steps = steps.filter(pl.col("budget") == pl.col("budget").max().over(
        "suite", "model", "loss", "targeted"))
    aa = _aa_acc(tables)
    panels = []
    for label, m, part in _by_model(steps, tables):
        ref = aa.get(m, {}).get("robust_acc")
        values = [100 * v for v in part["robust_acc"].drop_nulls().to_list()]
        y = Scale(*percent_range(values + ([100 * ref] if ref is not None else [])), 210, 28)
        x = Scale(0, max(int(part["budget"].max()), 1), 52, 358)
        marks = []
        for lo, t in attacks(part):
            run = part.filter(pl.col("loss") == lo, pl.col("targeted") == t).sort("iteration")
            pts: list[str] = []
            level = ""  # pixel row of the current step
            for it, acc in run.drop_nulls("robust_acc").select("iteration", "robust_acc").rows():
                if level:
                    pts.append(f"{c(x(it))},{level}")
                level = c(y(100 * acc))
                pts.append(f"{c(x(it))},{level}")
            marks.append(Mark("line", loss_color(lo), short_name(lo, t), points=" ".join(pts),
                              dash=DASH if t else ""))
        if ref is not None:
            marks.append(Mark("line", AA_COLOR, f"AutoAttack {100 * ref:.2f}%", dash="2 3",
                              points=f"{c(x.a)},{c(y(100 * ref))} {c(x.b)},{c(y(100 * ref))}"))
        ticks = [Tick(c(x(v)), tick_label(v)) for v in nice_ticks(x.lo, x.hi, 4)]
        panels.append(frame_panel(label, x, y, marks, x_label="iteration",
                                  y_label="robust accuracy (%)", x_ticks=ticks, width=380))
    return Figure(
        "fig-iterations", "Robust accuracy against iterations",
        f"At {HEADLINE_PRECISION}, each attack's run with its largest budget; the attack's own "
        "verdict at each iteration (dashed: targeted; dotted grey: AutoAttack).",
        _attack_legend(steps, bool(aa)), tuple(panels))


def precision_figure(tables: dict) -> Figure:
    """Grouped bars: robust accuracy of each attack at each precision, at the largest budget
    every precision ran."""
    ra = tables["robust_accuracy"]
    budgets = common_budgets(ra)
    precisions = sorted(ra["precision"].unique().to_list(), key=precision_rank)
    panels = []
    for label, m, part in _by_model(ra, tables):
        part = part.filter(pl.col("budget") == budgets[m])
        acc = {(lo, t, p): v for lo, t, p, v in part.select(
            "loss", "targeted", "precision", "robust_acc").iter_rows()}
        groups = attacks(part)
        y = Scale(0.0, percent_range([100 * v for v in acc.values() if v is not None],
                                     from_zero=True)[1], 200, 28)
        width = max(380, 60 + 14 * len(groups) * (len(precisions) + 1))
        x = Scale(0, len(groups), 52, width - 12)
        slot = (x.b - x.a) / max(len(groups), 1) / (len(precisions) + 1)
        marks, ticks = [], []
        for g, (lo, t) in enumerate(groups):
            ticks.append(Tick(c(x(g + 0.5)), short_name(lo, t)))
            for k, p in enumerate(precisions):
                v = acc.get((lo, t, p))
                if v is None:
                    continue
                left = x(g) + slot * (k + 0.5)
                marks.append(Mark("bar", PRECISION_COLORS.get(p, AA_COLOR),
                                  f"{short_name(lo, t)} {p}: {100 * v:.2f}%", x=c(left),
                                  y=c(y(100 * v)), w=c(slot * 0.92), h=c(y.a - y(100 * v))))
        panels.append(frame_panel(f"{label} (N = {budgets[m]})", x, y, marks, x_label="",
                                  y_label="robust accuracy (%)", x_ticks=ticks, width=int(width),
                                  slanted_x=True, bottom=62))
    legend = tuple(LegendItem(p, PRECISION_COLORS.get(p, AA_COLOR), "box") for p in precisions)
    return Figure(
        "fig-precision", "Precision comparison",
        "Robust accuracy (fp32 verdict) by the precision the attack ran in, at the largest "
        "budget every precision ran (-T: targeted).", legend, tuple(panels))


def cost_figure(tables: dict) -> Figure:
    """Robust accuracy against cost per point (log scale), each attack over its budgets."""
    keys = ["suite", "dataset", "model", "loss", "targeted", "precision", "budget"]
    runs = tables["robust_accuracy"].join(tables["attack_cost"].select(*keys, "cost_per_point"),
                                          on=keys, how="inner")
    runs = runs.filter(pl.col("precision") == HEADLINE_PRECISION)
    aa = _aa_acc(tables)
    panels = []
    for label, m, part in _by_model(runs, tables):
        ref = aa.get(m, {})
        pts = [(r["cost_per_point"], r["robust_acc"]) for r in part.iter_rows(named=True)]
        if ref.get("cost_per_point") and ref.get("robust_acc") is not None:
            pts.append((ref["cost_per_point"], ref["robust_acc"]))
        costs = [max(p[0], 1e-9) for p in pts if p[0] and p[1] is not None]
        if not costs:
            continue
        lo_dec = math.floor(math.log10(min(costs)))
        hi_dec = max(math.ceil(math.log10(max(costs))), lo_dec + 1)
        x = Scale(10.0 ** lo_dec, 10.0 ** hi_dec, 52, 352, log=True)
        y = Scale(*percent_range([100 * p[1] for p in pts if p[1] is not None]), 210, 28)
        marks = []
        for lo, t in sorted(part.select("loss", "targeted").unique().iter_rows(), key=attack_rank):
            series = part.filter(pl.col("loss") == lo, pl.col("targeted") == t).sort("budget")
            xy = [(cp, v, b) for cp, v, b in series.select(
                "cost_per_point", "robust_acc", "budget").iter_rows() if cp and v is not None]
            name = short_name(lo, t)
            marks.append(Mark("line", loss_color(lo), name, dash=DASH if t else "",
                              points=" ".join(f"{c(x(cp))},{c(y(100 * v))}" for cp, v, _ in xy)))
            marks += [Mark("marker", loss_color(lo), f"{name}, N = {b}: {100 * v:.2f}% at "
                           f"{cp:.0f} passes/point", x=c(x(cp)), y=c(y(100 * v)), hollow=t)
                      for cp, v, b in xy]
        if ref.get("cost_per_point") and ref.get("robust_acc") is not None:
            marks.append(Mark("marker", AA_COLOR, f"AutoAttack: {100 * ref['robust_acc']:.2f}%",
                              x=c(x(ref["cost_per_point"])), y=c(y(100 * ref["robust_acc"])),
                              shape="diamond"))
        ticks = [Tick(c(x(10.0 ** d)), tick_label(10.0 ** d)) for d in range(lo_dec, hi_dec + 1)]
        panels.append(frame_panel(label, x, y, marks, x_label="cost per point (log)",
                                  y_label="robust accuracy (%)", x_ticks=ticks, width=380))
    return Figure(
        "fig-cost", "Cost against robust accuracy",
        f"At {HEADLINE_PRECISION}: each attack across its budgets (cost = forward + backward "
        "passes per point) and AutoAttack (2 × gradient evaluations + forward-only queries per "
        "point, counted the same way); lower and further left is better.",
        _attack_legend(runs, bool(aa)), tuple(panels))


def all_figures(tables: dict) -> list[Figure]:
    return [iterations_figure(tables), precision_figure(tables), cost_figure(tables)]

