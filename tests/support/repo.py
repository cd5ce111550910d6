"""Temporary git + DVC copies of the project, and commands run inside them.

A copy holds the project's own package (``tmifpe``, ``stages``; ``conf`` and ``hydra_plugins``
for DVC's Hydra composition) and runs it, not this checkout's: commands get ``PYTHONPATH=""``,
the venv's ``bin`` on PATH (``dvc``) and ``PYTHONHASHSEED=0``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("tmifpe", "stages", "conf", "hydra_plugins")
# committed data deps of dvc.yaml outside the sources (the fast preset's validation results,
# read by the aggregate and report stages)
DATA_DEPS = ("benchmarks/results/fast_validation_v3.json",)


def env() -> dict[str, str]:
    """The environment of commands run in a copy."""
    out = dict(os.environ)
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out['PATH']}"
    out["PYTHONHASHSEED"] = "0"
    out["PYTHONPATH"] = ""  # the copied repo's own package, not this checkout's
    out.pop("TMIFPE_RUN_LOG", None)
    return out


def run(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``repo``; with ``check`` a failure raises with its output."""
    proc = subprocess.run(args, cwd=repo, env=env(), text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m dvc ...`` in ``repo`` (this interpreter's DVC)."""
    return run(repo, sys.executable, "-m", "dvc", *args, check=check)


def ran(proc: subprocess.CompletedProcess[str]) -> set[str]:
    """Stage names DVC actually executed in a `dvc repro` (not the skipped ones)."""
    return set(re.findall(r"Running stage '([^']+)'", proc.stdout))


def copy_project(repo: Path, sources: Iterable[str] = SOURCES,
                 files: Iterable[str] = ("dvc.yaml", ".dvcignore", ".gitignore")) -> Path:
    """Copy the project's ``sources`` folders (no bytecode), top-level ``files`` and the
    committed data deps (``DATA_DEPS``) to ``repo``."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in sources:
        shutil.copytree(ROOT / name, repo / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in (*files, *DATA_DEPS):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    return repo


def init_repo(repo: Path, *, hydra: bool = False) -> Path:
    """``git init`` + ``dvc init`` in ``repo`` (no analytics; Hydra composition if ``hydra``)."""
    run(repo, "git", "init", "-q")
    run(repo, "git", "config", "user.email", "ci@example.invalid")
    run(repo, "git", "config", "user.name", "ci")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    if hydra:
        dvc(repo, "config", "hydra.enabled", "true")
    return repo


def commit_all(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", message)
