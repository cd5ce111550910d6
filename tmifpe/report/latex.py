"""LaTeX tables (booktabs) from the aggregate tables, plus a standalone wrapper document.

Every value that reaches a template is LaTeX-escaped unless it is a ``Tex`` string built here
(numbers, ``\\textbf``), so names such as ``a_b&c`` can never break the document.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import polars as pl
from jinja2 import Environment, PackageLoader, StrictUndefined

from tmifpe.report.families import DASH, GroupedTable, family_table
from tmifpe.report.fast import fast_grid
from tmifpe.report.output import write_text_atomic
from tmifpe.report.views import (
    DIGITS,
    Cell,
    Grid,
    budget_grid,
    dtype_only_grid,
    main_grid,
    precision_grid,
)

_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "−": r"\ensuremath{-}", "–": "--", "§": r"\S{}", "×": r"\ensuremath{\times}",
}
STANDALONE_NAME = "tables_standalone.tex"


class Tex(str):
    """LaTeX source that is emitted verbatim."""

    __slots__ = ()


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters made literal (also < > |, which the default
    OT1 font encoding would print as other glyphs)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def _finalize(value: object) -> str:
    return value if isinstance(value, Tex) else tex_escape(str(value))


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("tmifpe.report", "templates"),
        block_start_string="<%", block_end_string="%>",
        variable_start_string="<<", variable_end_string=">>",
        comment_start_string="<#", comment_end_string="#>",
        autoescape=False, finalize=_finalize, undefined=StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )


def cell_tex(cell: Cell) -> Tex:
    """Fixed decimals; the best value of its column in bold; ``--`` for a run not made."""
    if cell.value is None:
        return Tex("--")
    text = f"{cell.value:.{DIGITS}f}"
    return Tex(rf"\textbf{{{text}}}" if cell.best else text)


def _grid_context(grid: Grid) -> dict:
    return {
        "key": grid.key,
        "caption": grid.caption,
        "corner": grid.corner,
        "columns": list(grid.columns),
        "subcolumns": list(grid.subcolumns),
        "spec": Tex("l" + "r" * len(grid.columns)),
        "width": len(grid.columns) + 1,
        "blocks": [
            {"label": b.label,
             "rows": [{"label": r.label, "cells": [cell_tex(c) for c in r.cells]} for r in b.rows]}
            for b in grid.blocks
        ],
    }


def _grouped_context(table: GroupedTable) -> dict:
    """A :class:`GroupedTable` for ``tables.tex.j2``: spanning headers with their rules, the
    column row and ``--`` for a dash."""
    spans, rules, col = [], [], len(table.lead) + 1
    for g in table.groups:
        spans.append({"width": len(g.columns), "label": g.label})
        rules.append(Tex(f"\\cmidrule(lr){{{col}-{col + len(g.columns) - 1}}}"))
        col += len(g.columns)
    return {
        "key": table.key,
        "caption": f"{table.title}. {table.note}",
        "spec": Tex("".join("r" if n else "l" for n in table.lead_numeric)
                    + "r" * (table.width - len(table.lead))),
        "lead": list(table.lead), "spans": spans, "rules": rules,
        "columns": [c for g in table.groups for c in g.columns],
        "rows": [[Tex("--") if v == DASH else v for v in r] for r in table.rows],
    }


def latex_tables(tables: dict[str, pl.DataFrame]) -> str:
    """The body of ``tables.tex``: main comparison, precision, budget, dtype-only, fast, then
    pure cast vs autocast (:mod:`tmifpe.report.families`)."""
    grids = [main_grid(tables), precision_grid(tables), budget_grid(tables),
             dtype_only_grid(tables)]
    grids += [g for g in (fast_grid(tables),) if g is not None]  # tmifpe/report/fast.py
    usable = [_grid_context(g) for g in grids if g.columns and g.blocks]
    grouped = [_grouped_context(t) for t in (family_table(tables),) if t.rows]
    return _environment().get_template("tables.tex.j2").render(grids=usable, grouped=grouped)


def render_latex(tables: dict[str, pl.DataFrame], out_path: Path) -> tuple[Path, Path]:
    """Write ``out_path`` (usually ``reports/tables.tex``; needs ``\\usepackage{booktabs}``) and
    ``tables_standalone.tex`` beside it, which ``\\input``s it and compiles with pdflatex."""
    out_path = Path(out_path)
    write_text_atomic(out_path, latex_tables(tables))
    wrapper = _environment().get_template("tables_standalone.tex.j2").render(
        tables_file=Tex(out_path.name.replace("\\", "/"))
    )
    return out_path, write_text_atomic(out_path.with_name(STANDALONE_NAME), wrapper)
