"""Reading the result files named by the grid (``docs/results-schema.md``): attack cells,
AutoAttack files and their timing JSON. Only listed files are read; a listed file that is
missing, malformed or duplicated is rejected with a one-line error naming it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from tmifpe.evaluation.schema import AA_ROW_KEYS, AA_SCHEMA, CELL_ROW_KEYS, CELL_SCHEMA

# The columns read (cast strictly to their documented dtype); the others are not needed here.
_CELL_READ = [
    "dataset", "model", "loss", "targeted", "precision", "budget", "example",
    "clean_correct", "robust_fp32", "robust_fp64", "false_success", "fp32_fp64_disagree",
    "first_success_iter", "margin_fp32", "margin_fp64", "n_forward", "n_backward",
    "zero_grad_steps", "nonfinite_steps", "dtype_only_hits", "missed_hits", "nonfinite_fp32",
    "nonfinite_fp64",
]
_AA_READ = [
    "dataset", "model", "example", "clean_correct", "broken_by", "robust_fp32",
    "robust_fp64", "margin_fp32", "n_grad", "n_queries", "nonfinite_fp32", "nonfinite_fp64",
]
CELL_COLUMNS = {c: CELL_SCHEMA[c] for c in _CELL_READ}
AA_COLUMNS = {c: AA_SCHEMA[c] for c in _AA_READ}

# Columns that must never be null: a null verdict would silently count as "not robust".
_NOT_NULL = [c for c in CELL_COLUMNS if not c.startswith("margin_")]
_AA_NOT_NULL = [c for c in AA_COLUMNS if c != "margin_fp32"]

_TIMING_SUFFIX = ".timing.json"
DEFAULT_SUITE = "default"


def require_files(paths: Sequence[Path]) -> list[Path]:
    """The paths as ``Path`` objects; ``FileNotFoundError`` naming the first one that is missing."""
    out = [Path(p) for p in paths]
    for path in out:
        if not path.is_file():
            raise FileNotFoundError(f"listed result file not found: {path}")
    return out


def load_cells(paths: Sequence[Path], suite: str = DEFAULT_SUITE) -> pl.DataFrame:
    """All attack-cell rows of the listed Parquet files, schema-checked, one frame, with the
    aggregated ``suite`` name as first column (rows carry none)."""
    frame = _load(require_files(paths), CELL_COLUMNS, CELL_ROW_KEYS, _NOT_NULL, "attack cell")
    return with_suite(frame, suite)


def load_autoattack(paths: Sequence[Path], suite: str = DEFAULT_SUITE) -> pl.DataFrame:
    """All AutoAttack rows of the listed Parquet files, schema-checked, one frame (+ suite)."""
    frame = _load(require_files(paths), AA_COLUMNS, AA_ROW_KEYS, _AA_NOT_NULL, "AutoAttack")
    return with_suite(frame, suite)


def with_suite(frame: pl.DataFrame, suite: str) -> pl.DataFrame:
    """``frame`` with a first column ``suite`` (the name of the suite being aggregated)."""
    return frame.select(pl.lit(suite, dtype=pl.String).alias("suite"), pl.all())


def _load(
    paths: list[Path],
    columns: dict[str, pl.DataType],
    keys: list[str],
    not_null: list[str],
    kind: str,
) -> pl.DataFrame:
    frames = []
    for path in paths:
        frame = _read(path, columns, kind)
        nulls = [c for c in not_null if frame[c].null_count()]
        if nulls:
            raise ValueError(f"{kind} file {path} has nulls in: {', '.join(nulls)}")
        frames.append(frame.with_columns(pl.lit(str(path)).alias("_file")))
    empty = pl.DataFrame(schema={**columns, "_file": pl.String()})
    data = pl.concat([empty, *frames], how="vertical")
    dup = data.filter(pl.struct(keys).is_duplicated())
    if dup.height:
        files = sorted(set(dup["_file"].to_list()))
        raise ValueError(f"duplicate {kind} rows ({keys}) across or within: {', '.join(files)}")
    return data.drop("_file")


def _read(path: Path, columns: dict[str, pl.DataType], kind: str) -> pl.DataFrame:
    """The needed columns of one Parquet file, cast strictly; one-line errors naming it."""
    try:
        lazy = pl.scan_parquet(path)
        missing = [c for c in columns if c not in lazy.collect_schema()]
        if missing:
            raise ValueError(f"{kind} file {path} lacks columns: {', '.join(missing)}")
        return lazy.select(pl.col(c).cast(t, strict=True) for c, t in columns.items()).collect()
    except (pl.exceptions.PolarsError, OSError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{kind} file {path} cannot be read as documented: {first}") from err


def load_timings(
    timing_paths: Sequence[Path], cell_paths: Sequence[Path], aa_paths: Sequence[Path],
    suite: str = DEFAULT_SUITE,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(cell timing, AutoAttack timing) frames from the listed timing files.

    ``X.timing.json`` belongs to the listed result file ``X.parquet``: a list of records for an
    attack cell (one per precision, targeting and batch), a mapping ``{attack: wall_time_s}``
    for AutoAttack. The identity (model, loss, budget) is read from that result file's rows,
    not from folder names. Cell rows are one per run (precision, targeting) with
    ``wall_time_per_point_s`` = Σ wall_time_s / Σ n_examples over its batches; AutoAttack rows
    the total ``wall_time_s`` (the ``total`` key, else the sum over attacks).
    """
    cells = {_resolved(p): Path(p) for p in cell_paths}
    attacks = {_resolved(p): Path(p) for p in aa_paths}
    cell_rows: list[dict] = []
    aa_rows: list[dict] = []
    for path in require_files(timing_paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"timing file {path} is not valid JSON ({err})") from err
        key = _sibling(path)
        if isinstance(data, list) and key in cells:
            ident = {"suite": suite,
                     **_identity(cells[key], ["dataset", "model", "loss", "budget"])}
            cell_rows.extend(_cell_records(path, data, ident))
        elif isinstance(data, dict) and key in attacks:
            ident = {"suite": suite, **_identity(attacks[key], ["dataset", "model"])}
            aa_rows.append({**ident, "wall_time_s": _aa_total(path, data)})
        else:
            raise ValueError(f"timing file {path} has no matching listed result file {key}")
    run = ["suite", "dataset", "model", "loss", "budget", "precision", "targeted"]
    cell_schema = {"suite": pl.String, "dataset": pl.String, "model": pl.String,
                   "loss": pl.String, "budget": pl.Int32, "precision": pl.String,
                   "targeted": pl.Boolean, "start": pl.Int64, "n_examples": pl.Int64,
                   "wall_time_s": pl.Float64}
    aa_schema = {"suite": pl.String, "dataset": pl.String, "model": pl.String,
                 "wall_time_s": pl.Float64}
    batches = pl.DataFrame(cell_rows, schema=cell_schema, orient="row")
    dup = batches.filter(pl.struct([*run, "start"]).is_duplicated())
    if dup.height:
        raise ValueError(f"cell timing: batch listed twice: {dup.row(0, named=True)}")
    cell_timing = (
        batches.group_by(run, maintain_order=True)
        .agg(pl.col("wall_time_s").sum(), pl.col("n_examples").sum())
        .select(*run, (pl.col("wall_time_s") / pl.col("n_examples"))
                .alias("wall_time_per_point_s"))
    )
    return cell_timing, pl.DataFrame(aa_rows, schema=aa_schema, orient="row")


def _cell_records(path: Path, records: list, ident: dict) -> list[dict]:
    """One row per batch record (start defaults to 0 for single-batch files)."""
    rows = []
    for rec in records:
        try:
            n = int(rec["n_examples"])
            if n <= 0:
                raise ValueError("n_examples must be positive")
            rows.append({**ident, "precision": str(rec["precision"]),
                         "targeted": bool(rec["targeted"]), "start": int(rec.get("start", 0)),
                         "n_examples": n, "wall_time_s": float(rec["wall_time_s"])})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"cell timing file {path}: bad record {rec!r} ({err!r})") from err
    return rows


def _aa_total(path: Path, data: dict) -> float:
    try:
        return float(data["total"]) if "total" in data else sum(map(float, data.values()))
    except (TypeError, ValueError) as err:
        raise ValueError(f"AutoAttack timing file {path}: bad content ({err})") from err


def _identity(path: Path, columns: list[str]) -> dict:
    """The single value of each identity column in a result file (ValueError if mixed)."""
    ident = pl.scan_parquet(path).select(columns).unique().collect()
    if ident.height != 1:
        raise ValueError(f"result file {path} holds {ident.height} distinct {columns} (need 1)")
    return ident.row(0, named=True)


def _sibling(timing_path: Path) -> str:
    name = timing_path.name
    if not name.endswith(_TIMING_SUFFIX):
        raise ValueError(f"timing file {timing_path} does not end in {_TIMING_SUFFIX}")
    return _resolved(timing_path.with_name(name[: -len(_TIMING_SUFFIX)] + ".parquet"))


def _resolved(path: Path) -> str:
    return str(Path(path).resolve())
