"""Writing the aggregate tables: Parquet and CSV per table, atomically, rows sorted."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

from tmifpe.aggregate.build import TABLE_KEYS, sort_table


def write_aggregates(tables: dict[str, pl.DataFrame], out_dir: Path) -> list[Path]:
    """Write ``<name>.parquet`` and ``<name>.csv`` for every table into ``out_dir``.

    Each file is written to a temporary file in ``out_dir`` and renamed into place. Returns the
    written paths in name order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(tables):
        table = sort_table(name, tables[name]) if name in TABLE_KEYS else tables[name]
        for suffix, writer in ((".parquet", _parquet), (".csv", _csv)):
            path = out_dir / f"{name}{suffix}"
            _atomic(path, lambda tmp, t=table, w=writer: w(t, tmp))
            written.append(path)
    return written


def _parquet(table: pl.DataFrame, path: Path) -> None:
    table.write_parquet(path, compression="zstd", statistics=True)


def _csv(table: pl.DataFrame, path: Path) -> None:
    table.write_csv(path)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
