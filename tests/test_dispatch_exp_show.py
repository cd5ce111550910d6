"""`dvc exp show` stays readable: the README's `--drop` pattern, applied as DVC applies it
(dvc/commands/experiments/show.py: ``re.compile("|".join(drop)).match(column)``) to the param
columns of the default and paper suites, removes every derived ``grid.*`` column and no
``suite.*`` one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _columns(doc: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _columns(value, f"{name}.")
        else:
            out.append(name)
    return out


def test_readme_drop_pattern_hides_the_derived_grid_only() -> None:
    from tmifpe.dispatch.params import compose

    m = re.search(r"dvc exp show --drop '([^']+)'", (ROOT / "README.md").read_text())
    assert m, "README documents no `dvc exp show --drop` pattern"
    drop = re.compile(m[1])
    for text in ((ROOT / "params.yaml").read_text(), compose(ROOT, ["suite=paper"])):
        columns = _columns(yaml.safe_load(text))
        grid = [c for c in columns if c.startswith("grid.")]
        assert len(grid) > 50  # many derived keys (one attack stage per model × loss)
        assert [c for c in columns if drop.match(c)] == grid
