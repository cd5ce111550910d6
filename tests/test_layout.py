"""The architecture the layout shows: the core (losses, t*, attack engines, precision, verify)
never imports the pipeline, and each loss package imports no other loss package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = [ROOT / "tmifpe/losses", ROOT / "tmifpe/attacks", ROOT / "tmifpe/precision.py",
        ROOT / "tmifpe/verify.py"]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _files(entry: Path) -> list[Path]:
    return sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]


@pytest.mark.parametrize("entry", CORE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_does_not_import_the_pipeline(entry: Path) -> None:
    for file in _files(entry):
        bad = {m for m in _imports(file)
               if m.startswith(("tmifpe.pipeline", "tmifpe.dispatch", "tmifpe.cli",
                                "tmifpe.report", "tmifpe.aggregate"))}
        assert not bad, f"{file.relative_to(ROOT)} imports {sorted(bad)}"


def test_pipeline_modules_live_in_the_pipeline_package() -> None:
    top = {p.stem for p in (ROOT / "tmifpe").glob("*.py")}
    assert top <= {"__init__", "api", "cli", "errors", "precision", "verify"}, sorted(top)
