"""Which environment produced which result file, and whether a report mixes hardware classes.

Every runner stores :func:`tmifpe.runtime.environment` in its Parquet file's key-value metadata
(``environment``). Results are bitwise reproducible within one hardware class and library
versions; across classes the last bits of float kernels differ, so a report whose files come
from several classes says so (README, "Reproducibility").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from tmifpe.storage import read_parquet_metadata

UNRECORDED = "unrecorded"
ENV_COLUMNS: dict[str, pl.DataType] = {
    "suite": pl.String(), "kind": pl.String(), "file": pl.String(),
    "hardware_class": pl.String(), "device_name": pl.String(), "torch": pl.String(),
    "cuda": pl.String(), "cudnn": pl.String(), "fp32_precision": pl.String(),
}
# What must agree for results to be bitwise comparable (README, "Reproducibility").
CLASS_KEYS = ["hardware_class", "torch", "cuda", "cudnn", "fp32_precision"]


def environment_table(files: Mapping[str, Sequence[Path]], suite: str) -> pl.DataFrame:
    """One row per result file (``kind`` → its files) with the environment it records."""
    rows = []
    for kind, paths in files.items():
        for path in paths:
            env = read_parquet_metadata(Path(path)).get("environment") or {}
            rows.append({
                "suite": suite, "kind": kind, "file": Path(path).as_posix(),
                "hardware_class": str(env.get("hardware_class", UNRECORDED)),
                "device_name": str(env.get("device_name", UNRECORDED)),
                "torch": str(env.get("torch", UNRECORDED)),
                "cuda": str(env.get("cuda")), "cudnn": str(env.get("cudnn")),
                "fp32_precision": json.dumps(env.get("fp32_precision"), sort_keys=True),
            })
    return pl.DataFrame(rows, schema=ENV_COLUMNS, orient="row")


def environment_summary(table: pl.DataFrame) -> tuple[list[str], bool]:
    """(one line per distinct environment with its file count, mixed?) for a report header."""
    if table.is_empty():
        return [], False
    groups = (table.group_by([*CLASS_KEYS, "device_name"]).agg(pl.len().alias("files"))
              .sort([*CLASS_KEYS, "device_name"]))
    lines = []
    for r in groups.iter_rows(named=True):
        gpu = "" if r["cuda"] == "None" else f", CUDA {r['cuda']}, cuDNN {r['cudnn']}"
        lines.append(f"{r['hardware_class']} ({r['device_name']}), torch {r['torch']}{gpu}, "
                     f"fp32 precision {r['fp32_precision']}: {r['files']} result files")
    return lines, table.select(CLASS_KEYS).unique().height > 1
