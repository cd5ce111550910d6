"""DVC stage `report`: aggregate tables -> reports/index.html, reports/tables.tex and the PDF
figures under reports/figures/ (the same as `tmifpe report`)."""

from __future__ import annotations

import typer

from tmifpe.pipeline.config import SuiteParams
from tmifpe.pipeline.stage_support import run_stage
from tmifpe.report.build import build_report


def main() -> None:
    def body(suite: SuiteParams) -> None:
        written = build_report(suite)
        print("report: " + ", ".join(str(p) for p in written[:2]) + f" (+ {len(written) - 2})")

    run_stage(body)


if __name__ == "__main__":
    typer.run(main)
