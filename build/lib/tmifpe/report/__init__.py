"""Reports from the aggregate tables: a self-contained HTML page and LaTeX tables."""

from tmifpe.report.html import html_report, render_html
from tmifpe.report.latex import latex_tables, render_latex

__all__ = ["html_report", "latex_tables", "render_html", "render_latex"]
