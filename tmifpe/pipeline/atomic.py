"""Atomic output writes: a stage never leaves a half-written file that DVC could cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl


def _tmp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Deterministic Parquet (no statistics timestamps; zstd) written via rename."""
    tmp = _tmp(path)
    frame.write_parquet(tmp, compression="zstd", statistics=False)
    tmp.replace(path)


def write_json(obj: Any, path: Path) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_text(text: str, path: Path) -> None:
    tmp = _tmp(path)
    tmp.write_text(text)
    tmp.replace(path)
