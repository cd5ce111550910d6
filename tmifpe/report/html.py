"""The HTML report: one self-contained file (inline CSS and SVG, no script, no external
resource), rendered with Jinja2 autoescaping for every value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import polars as pl
from jinja2 import Environment, PackageLoader, StrictUndefined

from tmifpe.report.detail import Table, all_tables
from tmifpe.report.families import family_table
from tmifpe.report.fast import fast_section
from tmifpe.report.output import write_text_atomic
from tmifpe.report.plots import all_figures
from tmifpe.report.views import DIGITS, budget_grid, dtype_only_grid, main_grid, precision_grid


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("tmifpe.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fixed"] = lambda value: f"{value:.{DIGITS}f}"
    return env


def html_report(
    tables: dict[str, pl.DataFrame],
    *,
    title: str,
    meta: Mapping[str, object],
    extra_tables: Sequence[Table] = (),
) -> str:
    """The report as a string. ``meta``: caller-supplied facts shown under the title, in the
    given order (commit, params, dates: nothing is added here, so the output is reproducible).
    ``extra_tables``: sections of other stages (diagnostics, ablations), shown after the rest."""
    grids = {"main": main_grid(tables), "precision": precision_grid(tables),
             "dtype_only": dtype_only_grid(tables), "budget": budget_grid(tables)}
    figures = all_figures(tables)
    details = [*all_tables(tables), *extra_tables]
    contents = [(grids["main"].key, "Main comparison")]
    fast = fast_section(tables)  # the fast preset beside AutoAttack (None without results)
    contents += [(fast.key, fast.title)] if fast else []
    contents += [(f.key, f.title) for f in figures]
    families = family_table(tables)  # pure cast vs autocast
    contents += [(g.key, g.title) for g in (grids["precision"], grids["dtype_only"], families,
                                            grids["budget"])]
    contents += [(t.key, t.title) for t in details]
    return _environment().get_template("report.html.j2").render(
        title=title,
        meta=[(str(k), str(v)) for k, v in meta.items()],
        contents=contents,
        figures=figures,
        tables=details,
        fast=fast,
        families=families,
        **grids,
    )


def render_html(
    tables: dict[str, pl.DataFrame],
    out_path: Path,
    *,
    title: str,
    meta: Mapping[str, object],
    extra_tables: Sequence[Table] = (),
) -> Path:
    """Write the report to ``out_path`` (atomically); same tables and meta → same bytes."""
    html = html_report(tables, title=title, meta=meta, extra_tables=extra_tables)
    return write_text_atomic(Path(out_path), html)
