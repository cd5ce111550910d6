"""What the report tables show, independent of the output format: labels, ordering, and the
three comparison grids (attacks × models, attacks × precisions, attacks × budgets) with the
best (lowest robust accuracy, i.e. strongest attack) value of each column marked."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

LOSS_ORDER = ("ce", "cw", "dlr", "mifpe", "tmifpe")
LOSS_LABELS = {"ce": "CE", "cw": "C&W", "dlr": "DLR", "mifpe": "MIFPE", "tmifpe": "T-MIFPE"}
PRECISION_ORDER = ("fp16", "bf16", "fp32", "fp64", "amp-fp16", "amp-bf16")
HEADLINE_PRECISION = "fp32"
DIGITS = 2  # decimals of every percentage shown

Model = tuple[str, str, str]  # (suite, dataset, model)
Attack = tuple[str, bool]  # (loss, targeted)


@dataclass(frozen=True)
class Cell:
    value: float | None  # percent
    best: bool = False


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Block:
    label: str | None
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Grid:
    """A table of attack rows in blocks (separated by a rule, with an optional block label) and
    one column per model, precision or budget; cells are percentages."""

    key: str
    title: str
    caption: str
    corner: str
    columns: tuple[str, ...]
    subcolumns: tuple[str, ...]
    blocks: tuple[Block, ...]


def attack_name(loss: str, targeted: bool) -> str:
    return LOSS_LABELS.get(loss, loss) + (" targeted" if targeted else "")


def attack_rank(attack: Attack) -> tuple:
    loss, targeted = attack
    rank = LOSS_ORDER.index(loss) if loss in LOSS_ORDER else len(LOSS_ORDER)
    return (rank, loss, targeted)


def precision_rank(precision: str) -> tuple:
    known = precision in PRECISION_ORDER
    return (0, PRECISION_ORDER.index(precision), "") if known else (1, 0, precision)


def models(tables: dict[str, pl.DataFrame]) -> list[Model]:
    """Every model with any result, sorted."""
    names = ("clean_accuracy", "robust_accuracy", "autoattack")
    frames = [tables[n].select("suite", "dataset", "model") for n in names]
    return sorted(pl.concat(frames).unique().iter_rows())


def model_label(model: Model, all_models: list[Model]) -> str:
    several_suites = len({m[0] for m in all_models}) > 1
    return f"{model[0]}: {model[2]}" if several_suites else model[2]


def attacks(frame: pl.DataFrame) -> list[Attack]:
    return sorted(frame.select("loss", "targeted").unique().iter_rows(), key=attack_rank)


def max_budgets(frame: pl.DataFrame) -> dict[Model, int]:
    """Largest budget per model in a robust_accuracy-like frame."""
    top = frame.group_by("suite", "dataset", "model").agg(pl.col("budget").max())
    return {(s, d, m): b for s, d, m, b in top.iter_rows()}


def common_budgets(frame: pl.DataFrame) -> dict[Model, int]:
    """Per model, the largest budget that every precision of that model ran (so a precision
    capped at a smaller budget, e.g. fp16 on CPU, is still compared like for like)."""
    keys = ["suite", "dataset", "model"]
    n_prec = frame.group_by(keys).agg(pl.col("precision").n_unique().alias("n_prec"))
    per_budget = frame.group_by([*keys, "budget"]).agg(pl.col("precision").n_unique().alias("n"))
    top = (per_budget.join(n_prec, on=keys).filter(pl.col("n") == pl.col("n_prec"))
           .group_by(keys).agg(pl.col("budget").max()))
    return {(s, d, m): b for s, d, m, b in top.iter_rows()}


def percent(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def shown(value: float) -> float:
    """The value as printed (fixed decimals): ties are judged on what the reader sees."""
    return float(f"{value:.{DIGITS}f}")


def mark_best(rows: list[tuple[str, list[float | None]]]) -> tuple[Row, ...]:
    """Rows with the lowest printed value of each column marked (all tied values); a column
    with fewer than two values has no best."""
    n_cols = len(rows[0][1]) if rows else 0
    best: list[float | None] = []
    for j in range(n_cols):
        values = [shown(r[1][j]) for r in rows if r[1][j] is not None]
        best.append(min(values) if len(values) >= 2 else None)
    marked = []
    for label, vals in rows:
        pairs = zip(vals, best, strict=True)
        marked.append(Row(label, tuple(Cell(v, v is not None and shown(v) == b) for v, b in pairs)))
    return tuple(marked)


def plain(rows: list[tuple[str, list[float | None]]]) -> tuple[Row, ...]:
    return tuple(Row(label, tuple(Cell(v) for v in vals)) for label, vals in rows)


def main_grid(tables: dict[str, pl.DataFrame]) -> Grid:
    """Attacks (and AutoAttack) × models at fp32 and each model's largest fp32 budget."""
    ra = tables["robust_accuracy"].filter(pl.col("precision") == HEADLINE_PRECISION)
    all_models = models(tables)
    budgets = max_budgets(ra)
    acc = {(s, d, m, lo, t, b): v for s, d, m, lo, t, b, v in ra.select(
        "suite", "dataset", "model", "loss", "targeted", "budget", "robust_acc").iter_rows()}
    rows = [
        (attack_name(*a), [percent(acc.get((*m, *a, budgets.get(m)))) for m in all_models])
        for a in attacks(ra)
    ]
    aa = {(s, d, m): v for s, d, m, v in tables["autoattack"].select(
        "suite", "dataset", "model", "robust_acc").iter_rows()}
    rows.append(("AutoAttack", [percent(aa.get(m)) for m in all_models]))
    wc = tables["worst_case"].filter(pl.col("precision") == HEADLINE_PRECISION)
    worst = {(s, d, m, b): v for s, d, m, b, v in wc.select(
        "suite", "dataset", "model", "budget", "robust_acc").iter_rows()}
    clean = {(s, d, m): v for s, d, m, v in tables["clean_accuracy"].select(
        "suite", "dataset", "model", "clean_acc").iter_rows()}
    reference = [
        ("Worst case over attacks", [percent(worst.get((*m, budgets.get(m)))) for m in all_models]),
        ("Clean accuracy", [percent(clean.get(m)) for m in all_models]),
    ]
    return Grid(
        key="main",
        title="Robust accuracy: losses against AutoAttack",
        caption=(f"Robust accuracy (%) at {HEADLINE_PRECISION}, each model at its largest "
                 "budget (column header); lowest value per model (strongest attack) in bold. "
                 "The worst case counts an example robust only if it survives every attack "
                 "listed."),
        corner="Attack",
        columns=tuple(model_label(m, all_models) for m in all_models),
        subcolumns=tuple(f"budget {budgets[m]}" if m in budgets else "" for m in all_models),
        blocks=(Block(None, mark_best(rows)), Block(None, plain(reference))),
    )


def precision_grid(tables: dict[str, pl.DataFrame]) -> Grid:
    """Attacks × precisions per model at the largest budget every precision ran."""
    ra = tables["robust_accuracy"]
    precisions = sorted(ra["precision"].unique().to_list(), key=precision_rank)
    budgets = common_budgets(ra)
    acc = {(s, d, m, lo, t, p, b): v for s, d, m, lo, t, p, b, v in ra.select(
        "suite", "dataset", "model", "loss", "targeted", "precision", "budget", "robust_acc"
    ).iter_rows()}
    all_models = models(tables)
    blocks = []
    for m in (m for m in all_models if m in budgets):
        rows = [(attack_name(*a), [percent(acc.get((*m, *a, p, budgets[m]))) for p in precisions])
                for a in attacks(ra.filter(pl.col("model") == m[2], pl.col("suite") == m[0]))]
        blocks.append(Block(f"{model_label(m, all_models)} (budget {budgets[m]})", mark_best(rows)))
    return Grid(
        key="precision",
        title="Robust accuracy by attack precision",
        caption=("Robust accuracy (%) by the precision of model and loss during the attack "
                 "(verdict re-verified at fp32), at the largest budget that every precision "
                 "ran for that model; lowest value "
                 "per column and model in bold."),
        corner="Attack",
        columns=tuple(precisions),
        subcolumns=(),
        blocks=tuple(blocks),
    )


def dtype_only_grid(tables: dict[str, pl.DataFrame]) -> Grid:
    """Attacks × precisions per model, same budgets as :func:`precision_grid`: % of points
    with at least one dtype-only hit (a precision effect of its own, not in robust accuracy)."""
    pe = tables["precision_effect"]
    precisions = sorted(pe["precision"].unique().to_list(), key=precision_rank)
    budgets = common_budgets(tables["robust_accuracy"])
    share = {(s, d, m, lo, t, p, b): (100.0 * k / n if n else None)
             for s, d, m, lo, t, p, b, k, n in pe.select(
                 "suite", "dataset", "model", "loss", "targeted", "precision", "budget",
                 "n_dtype_only_examples", "n").iter_rows()}
    all_models = models(tables)
    blocks = []
    for m in (m for m in all_models if m in budgets):
        rows = [(attack_name(*a), [share.get((*m, *a, p, budgets[m])) for p in precisions])
                for a in attacks(pe.filter(pl.col("model") == m[2], pl.col("suite") == m[0]))]
        blocks.append(Block(f"{model_label(m, all_models)} (budget {budgets[m]})", plain(rows)))
    return Grid(
        key="dtype-only",
        title="Dtype-only hits by attack precision",
        caption=("Points (%) at which the attack met at least one iterate that its own "
                 "precision called misclassified but a fresh fp32 pass did not: a measured "
                 "precision effect of its own. Such an iterate is not a success; the attack went "
                 "on from it, so these points are not in the robust accuracy above. Same budgets "
                 "as the precision table; fp32 is 0 by construction (its attack pass is the fp32 "
                 "pass)."),
        corner="Attack",
        columns=tuple(precisions),
        subcolumns=(),
        blocks=tuple(blocks),
    )


def budget_grid(tables: dict[str, pl.DataFrame]) -> Grid:
    """Attacks × budgets per model at fp32."""
    ra = tables["robust_accuracy"].filter(pl.col("precision") == HEADLINE_PRECISION)
    budgets = sorted(ra["budget"].unique().to_list())
    acc = {(s, d, m, lo, t, b): v for s, d, m, lo, t, b, v in ra.select(
        "suite", "dataset", "model", "loss", "targeted", "budget", "robust_acc").iter_rows()}
    all_models = models(tables)
    present = set(max_budgets(ra))
    blocks = []
    for m in (m for m in all_models if m in present):
        rows = [(attack_name(*a), [percent(acc.get((*m, *a, b))) for b in budgets])
                for a in attacks(ra.filter(pl.col("model") == m[2], pl.col("suite") == m[0]))]
        blocks.append(Block(model_label(m, all_models), mark_best(rows)))
    return Grid(
        key="budget",
        title="Robust accuracy by iteration budget",
        caption=(f"Robust accuracy (%) at {HEADLINE_PRECISION} by iteration budget; lowest "
                 "value per column and model in bold; a dash marks a run not made."),
        corner="Attack",
        columns=tuple(f"budget {b}" for b in budgets),
        subcolumns=(),
        blocks=tuple(blocks),
    )
