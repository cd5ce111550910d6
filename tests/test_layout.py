"""The architecture the layout shows: the core (losses, t*, attack engines, precision, verify)
and the floor under it (params types, data, models, runtime, storage, the evaluation schema)
never import the pipeline, and each loss package imports no other loss package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = [ROOT / "tmifpe/losses", ROOT / "tmifpe/attacks", ROOT / "tmifpe/precision.py",
        ROOT / "tmifpe/verify.py"]
# below the pipeline too: what the library's loaders and every runner stand on
FLOOR = [ROOT / "tmifpe/data", ROOT / "tmifpe/models", ROOT / "tmifpe/params.py",
         ROOT / "tmifpe/choices.py", ROOT / "tmifpe/runtime.py", ROOT / "tmifpe/storage.py",
         ROOT / "tmifpe/evaluation/schema.py"]
UPPER = ("tmifpe.pipeline", "tmifpe.dispatch", "tmifpe.cli", "tmifpe.report", "tmifpe.aggregate")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions; ``from a import b``
    yields ``a`` and ``a.b`` (b may be a submodule)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _files(entry: Path) -> list[Path]:
    return sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]


@pytest.mark.parametrize("entry", CORE + FLOOR, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_core_and_floor_do_not_import_the_pipeline(entry: Path) -> None:
    assert entry.exists(), entry
    for file in _files(entry):
        bad = {m for m in _imports(file) if m.startswith(UPPER) or m == "tmifpe.api"}
        assert not bad, f"{file.relative_to(ROOT)} imports {sorted(bad)}"


def test_pipeline_modules_live_in_the_pipeline_package() -> None:
    top = {p.stem for p in (ROOT / "tmifpe").glob("*.py")}
    assert top <= {"__init__", "api", "cli", "choices", "errors", "params", "precision",
                   "runtime", "storage", "verify"}, sorted(top)
